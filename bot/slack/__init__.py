"""Everything that speaks Slack: identifiers, message rendering, the sink and the listeners."""
