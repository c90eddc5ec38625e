"""Users, API tokens and sessions; the ``Authenticator`` the app plugs into its context.

Passwords are checked with scrypt; tokens and session ids are random 256-bit values looked up
by their sha256. The settings' ``api_token`` stays valid as the bootstrap admin's token, so
scripts and clients written for the single shared token keep working.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.core.auth import Principal, Role
from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from control_plane.users.models import ApiToken, User, UserSession
from control_plane.users.passwords import hash_password, verify_password
from control_plane.users.schemas import UserCreate, UserUpdate

logger = logging.getLogger(__name__)

ADMIN_PASSWORD_FILE = "admin-password"
# A failed sign-in costs as much as a good one: verify against this when the user is unknown.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
_TOUCH_EVERY = dt.timedelta(seconds=60)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _aware(t: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class UserService:
    def __init__(self, session: Session, ctx: AppContext) -> None:
        self.session = session
        self.ctx = ctx

    # --- users -------------------------------------------------------------------------------

    def list(self) -> list[User]:
        return list(self.session.scalars(select(User).order_by(User.username)))

    def get(self, username: str) -> User:
        user = self.session.get(User, username)
        if user is None:
            raise NotFound(f"user {username!r} not found")
        return user

    def create(self, spec: UserCreate, must_change_password: bool = False) -> User:
        if self.session.get(User, spec.username) is not None:
            raise Conflict(f"user {spec.username!r} already exists")
        user = User(
            username=spec.username,
            role=spec.role.value,
            password_hash=hash_password(spec.password),
            must_change_password=must_change_password,
        )
        self.session.add(user)
        try:
            self.session.commit()
        except IntegrityError:
            # Another request (or another replica at start) created the same name first.
            self.session.rollback()
            raise Conflict(f"user {spec.username!r} already exists") from None
        return user

    def update(self, username: str, changes: UserUpdate, by: str) -> User:
        user = self.get(username)
        demoted = changes.role is not None and changes.role != Role.admin
        if user.role == Role.admin and (demoted or changes.disabled):
            self._keep_an_admin(username)
        if username == by and changes.disabled:
            raise InvalidRequest("you cannot disable yourself")
        if changes.role is not None:
            user.role = changes.role.value
        if changes.password is not None:
            user.password_hash = hash_password(changes.password)
            user.must_change_password = False
            self._end_sessions(username)
        if changes.disabled is not None:
            user.disabled = changes.disabled
            if changes.disabled:
                self._end_sessions(username)
        self.session.commit()
        return user

    def delete(self, username: str, by: str) -> None:
        user = self.get(username)
        if username == by:
            raise InvalidRequest("you cannot delete yourself")
        if username == self.ctx.settings.auth.admin_username:
            raise InvalidRequest("the bootstrap admin cannot be deleted (disable it instead)")
        if user.role == Role.admin:
            self._keep_an_admin(username)
        self.session.delete(user)
        self.session.commit()

    def _keep_an_admin(self, username: str) -> None:
        others = self.session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.admin.value, User.username != username, ~User.disabled)
        )
        if not others:
            raise Conflict(f"{username!r} is the last active admin")

    def change_password(self, username: str, current: str, new: str) -> User:
        user = self.get(username)
        if not verify_password(current, user.password_hash):
            raise InvalidRequest("the current password is wrong")
        if current == new:
            raise InvalidRequest("the new password must differ from the current one")
        user.password_hash = hash_password(new)
        user.must_change_password = False
        self.session.commit()
        return user

    def check_password(self, username: str, password: str) -> User:
        """The user these credentials sign in; ``Unauthorized`` (one message for every cause)."""
        user = self.session.get(User, username)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok or user.disabled:
            raise Unauthorized("wrong user name or password")
        return user

    def ensure_bootstrap_admin(self) -> str | None:
        """Create the settings' admin on first start; the generated password, if one was made.

        A generated password goes to ``<data_dir>/admin-password`` (0600) and must be changed at
        the first sign-in; a password from the settings is used as given.
        """
        auth = self.ctx.settings.auth
        if self.session.get(User, auth.admin_username) is not None:
            return None
        given = auth.admin_password.get_secret_value() if auth.admin_password else None
        password = given or secrets.token_urlsafe(12)
        spec = UserCreate(username=auth.admin_username, password=password, role=Role.admin)
        try:
            self.create(spec, must_change_password=given is None)
        except Conflict:
            # A replica starting at the same moment made the admin (and wrote its password file).
            return None
        if given:
            return None
        path = self.ctx.settings.data_dir / ADMIN_PASSWORD_FILE
        _write_private(path, password + "\n")
        logger.warning("created admin %r; one-time password in %s", auth.admin_username, path)
        return password

    # --- API tokens --------------------------------------------------------------------------

    def create_token(self, username: str, name: str) -> tuple[ApiToken, str]:
        self.get(username)
        secret = "cpt_" + secrets.token_urlsafe(32)
        token = ApiToken(
            id=secrets.token_hex(8), username=username, name=name, token_hash=digest(secret)
        )
        self.session.add(token)
        self.session.commit()
        return token, secret

    def tokens(self, username: str) -> list[ApiToken]:
        query = select(ApiToken).where(ApiToken.username == username)
        return list(self.session.scalars(query.order_by(ApiToken.created_at)))

    def revoke_token(self, username: str, token_id: str) -> None:
        token = self.session.get(ApiToken, token_id)
        if token is None or token.username != username:
            raise NotFound(f"token {token_id!r} not found")
        self.session.delete(token)
        self.session.commit()

    def token_principal(self, secret: str) -> Principal | None:
        token = self.session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(secret)))
        if token is None:
            return None
        user = self.session.get(User, token.username)
        if user is None or user.disabled:
            return None
        now = utcnow()
        # At most one write a minute per token: a busy client must not turn reads into writes.
        if token.last_used_at is None or now - _aware(token.last_used_at) > _TOUCH_EVERY:
            token.last_used_at = now
            self.session.commit()
        return Principal(user.username, Role(user.role), via="token")

    # --- sessions ----------------------------------------------------------------------------

    def start_session(self, user: User) -> tuple[str, str]:
        """A new session: (cookie value, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        ttl = dt.timedelta(seconds=self.ctx.settings.auth.session_ttl_s)
        now = utcnow()
        self.session.execute(delete(UserSession).where(UserSession.expires_at < now))
        self.session.add(
            UserSession(
                id_hash=digest(sid), username=user.username, csrf=csrf, expires_at=now + ttl
            )
        )
        self.session.commit()
        return sid, csrf

    def session_principal(self, sid: str) -> Principal | None:
        """The live session's user, in one query (every page and cookie request asks)."""
        row = self.session.execute(
            select(UserSession.csrf, UserSession.expires_at, User)
            .join(User, User.username == UserSession.username)
            .where(UserSession.id_hash == digest(sid))
        ).first()
        if row is None:
            return None
        csrf, expires_at, user = row
        if _aware(expires_at) < utcnow() or user.disabled:
            return None
        return Principal(
            user.username,
            Role(user.role),
            via="session",
            csrf=csrf,
            must_change_password=user.must_change_password,
        )

    def end_session(self, sid: str) -> None:
        self.session.execute(delete(UserSession).where(UserSession.id_hash == digest(sid)))
        self.session.commit()

    def _end_sessions(self, username: str) -> None:
        self.session.execute(delete(UserSession).where(UserSession.username == username))


class UserAuthenticator:
    """``core.auth.Authenticator`` over the users tables (plus the settings' shared token)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._shared = ctx.settings.api_token.get_secret_value().encode()

    def from_token(self, token: str) -> Principal | None:
        if hmac.compare_digest(token.encode(), self._shared):
            return Principal(self.ctx.settings.auth.admin_username, Role.admin)
        with self.ctx.sessions() as session:
            return UserService(session, self.ctx).token_principal(token)

    def from_session(self, session_id: str) -> Principal | None:
        with self.ctx.sessions() as session:
            return UserService(session, self.ctx).session_principal(session_id)


def start_users(ctx: AppContext) -> str | None:
    """Plug the users tables into ``ctx`` and create the bootstrap admin on first start.

    Returns the admin's generated one-time password when one was just made.
    """
    ctx.authenticator = UserAuthenticator(ctx)
    with ctx.sessions() as session:
        return UserService(session, ctx).ensure_bootstrap_admin()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
