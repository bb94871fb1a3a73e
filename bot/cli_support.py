"""What every ``reauthbot`` command shares: its errors and how it opens the database.

The commands that read or act (check, cases, case, poll…) never create a database: an SQLite
file that is not there is reported with the path looked at, and nothing is written. Only
``serve`` and ``db upgrade`` create one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import Settings
from storage.engine import create_engine, normalize_url, session_factory
from storage.migrate import current_revision, head_revision
from workflows.nylas import NylasError

EXIT_FAILURE = 1
# Configuration and usage errors, as argparse exits on a bad command line.
EXIT_CONFIG = 2


class CommandError(Exception):
    """A command could not do its work; the message is one line for the operator."""

    def __init__(self, message: str, *, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """The command line asks for something that does not exist or cannot be (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_CONFIG)


def masked_url(settings: Settings) -> str:
    """The database URL as it may be shown: the password masked."""
    return normalize_url(settings.database_url).render_as_string(hide_password=True)


def database_error(settings: Settings, exc: BaseException) -> CommandError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CommandError(f"cannot use the database at {masked_url(settings)}: {reason}")


def sqlite_path(url: URL) -> Path | None:
    """The absolute path of an SQLite database file, or None for another engine."""
    if not url.drivername.startswith("sqlite") or url.database is None:
        return None
    return Path(url.database).expanduser().absolute()


def missing_database(settings: Settings) -> str | None:
    """Say where the SQLite database was looked for when it is not there; None when it is."""
    path = sqlite_path(normalize_url(settings.database_url))
    if path is None or path.is_file():
        return None
    return f"no database at {path} (run `reauthbot db upgrade` or `reauthbot serve` first)"


@asynccontextmanager
async def existing_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the database the settings name, which must already exist."""
    missing = missing_database(settings)
    if missing is not None:
        raise CommandError(missing)
    engine = create_engine(settings.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def migrated_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Open the database for a command; any database failure becomes one CommandError line."""
    async with existing_engine(settings) as engine:
        try:
            if await current_revision(engine) != head_revision():
                raise CommandError("the database is not migrated; run `reauthbot db upgrade` first")
            yield session_factory(engine)
        except (CommandError, NylasError):
            raise
        except Exception as exc:
            raise database_error(settings, exc) from None
