"""Slack identifiers in one place; ``manifest.yml`` is checked against them by a test."""

from __future__ import annotations

EVENTS_PATH = "/slack/events"

# Buttons on a case's alert. The button's value carries the case number.
ACK = "case_ack"
LINK = "case_link"
SEND_LINK = "case_send_link"  # makes a link and sends it to the end user ([outreach])
SNOOZE = "case_snooze"  # a menu; each option's value is "<case>:<duration>"
RESOLVE = "case_resolve"  # opens the resolve modal
RETRY = "case_retry"
REVOKE = "case_revoke"  # v2: confirm dialog; v3: opens the revoke modal
DELETE_OLD = "case_delete_old"  # a duplicate's old account id; confirm dialog
SUPPORT_TICKET = "case_support_ticket"  # answers privately with the ticket text
SEND_ONLY = "case_send_only"  # a stuck initializing account only sends: resolve, stop alerting
UNDO_SEND_ONLY = "case_undo_send_only"  # on /reauth show of a send-only account's case

# The next page of `/reauth list`; the value carries the filters and the offset.
LIST_MORE = "cases_more"

# Bulk actions on an incident's message (a storm). The button's value carries the incident.
INCIDENT_ACK = "incident_ack_all"
INCIDENT_LINKS = "incident_links"
INCIDENT_SEND_LINKS = "incident_send_links"  # sends every end user their link, paced
INCIDENT_RETRY = "incident_retry_all"
INCIDENT_SHOW = "incident_show_cases"  # answers privately with the cases and their buttons

# The month-end billing clean-up's message; the button's value carries the month ("2026-02").
# Never on a case's own card: deleting is not the fix of one case.
CLEANUP_DELETE = "cleanup_delete"  # opens the clean-up modal

ACTIONS = (
    ACK,
    LINK,
    SEND_LINK,
    SNOOZE,
    RESOLVE,
    RETRY,
    REVOKE,
    DELETE_OLD,
    SUPPORT_TICKET,
    SEND_ONLY,
    UNDO_SEND_ONLY,
    LIST_MORE,
    INCIDENT_ACK,
    INCIDENT_LINKS,
    INCIDENT_SEND_LINKS,
    INCIDENT_RETRY,
    INCIDENT_SHOW,
    CLEANUP_DELETE,
)

COMMAND = "/reauth"
COMMANDS = (COMMAND,)

# Events the bot subscribes to (manifest: settings.event_subscriptions.bot_events).
APP_HOME_OPENED = "app_home_opened"  # publish the Home tab of whoever opened it
EVENTS = (APP_HOME_OPENED,)

# Modals.
RESOLVE_MODAL = "resolve_modal"  # private_metadata carries the case number
NOTE_BLOCK = "note"
NOTE_INPUT = "note_input"
REVOKE_MODAL = "revoke_modal"  # the email must be typed back to delete a v3 grant
CONFIRM_BLOCK = "confirm"
CONFIRM_INPUT = "confirm_input"
CLEANUP_MODAL = "cleanup_modal"  # the number of accounts must be typed; metadata: the month
VIEWS = (RESOLVE_MODAL, REVOKE_MODAL, CLEANUP_MODAL)

# Bot scopes the registered features need, and why.
BOT_SCOPES = (
    "chat:write",  # post alerts, update them in place, reply in their threads
    "commands",  # the /reauth slash command
    "channels:history",  # before posting an alert again, find the copy a lost answer hid
    "groups:history",  # the same in a private alert channel
    "usergroups:read",  # resolve user groups (S…) named in the permissions policy
    "users:read",  # show who acted
)
