"""Mosquitto configuration generated from the device registry.

Three files: ``mosquitto.conf`` (listeners, TLS, authentication, limits), ``passwd`` (the control
plane's identity plus one line per device, in Mosquitto's ``$7$`` PBKDF2-SHA512 format, written
straight from the stored hashes) and ``acl`` (the control plane may use ``<root>/#``; each device
only the leaves of its own subtree it needs, see docs/fleet.md). ``passwd`` and ``acl`` are
rewritten whenever the registry changes; ``kill -HUP`` makes Mosquitto reread them and drop clients
whose credentials were revoked.

Identities the registry does not know (a monitoring client, a bench's subscribers) go into
``passwd.local`` and ``acl.local`` in the same folder, which the operator owns: their lines are
appended to the generated files on every rewrite, so they survive registrations. They may not use
a name the registry owns (the control plane's or a device's), since that would widen its rights.

Every listener binds the MQTT client id to the authenticated identity
(``use_username_as_clientid``): without it a device holding its own valid credentials could
connect with another device's client id, or the control plane's, and the broker would hand it
that client's live connection and persistent session (session takeover).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.credentials import hash_password
from control_plane.core.settings import Settings
from control_plane.devices.service import broker_credentials
from protos import fleet_batch, fleet_capture
from protos import fleet_topics as topics

CONF_NAME = "mosquitto.conf"
PASSWD_NAME = "passwd"
ACL_NAME = "acl"
LOCAL_PASSWD_NAME = "passwd.local"
LOCAL_ACL_NAME = "acl.local"
DATA_NAME = "data"

# What a device may do in its own subtree. Reading back its own retained reported state and status
# lets a restarted agent see what it last said; it can never write its desired state or chunks.
_DEVICE_ACCESS = {
    topics.DESIRED: "read",
    topics.CHUNKS_DATA: "read",
    topics.REPORTED: "readwrite",
    topics.STATUS: "readwrite",
    topics.CHUNKS_REQUEST: "write",
    topics.TELEMETRY: "write",
    topics.EVENTS: "write",
    # Batch jobs on the device (protos/fleet_batch.py).
    **{leaf: "read" for leaf in fleet_batch.DEVICE_SUBSCRIBES},
    **{leaf: "write" for leaf in fleet_batch.DEVICE_PUBLISHES},
    # Captured samples (protos/fleet_capture.py). Like ``reported``, the retained ``captures/stat``
    # is readable by the device that wrote it.
    **{leaf: "read" for leaf in fleet_capture.DEVICE_SUBSCRIBES},
    fleet_capture.UP: "write",
    fleet_capture.STATUS: "readwrite",
}

# Names of local identities: what Mosquitto accepts as a user name and client id without quoting.
_LOCAL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ACL_ACCESS = ("read", "write", "readwrite", "deny")

logger = logging.getLogger(__name__)


class BrokerConfigError(ValueError):
    """The options or the operator's local files cannot make a working, safe configuration."""


@dataclass(frozen=True)
class ListenerOptions:
    """What ``control-plane broker-config`` is told about the broker it configures."""

    port: int = 1883
    bind: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA that signs client certificates: required by the certificate options below.
    tls_ca: Path | None = None
    # The listener on ``port`` authenticates by client certificate (CN = identity), not password.
    require_client_cert: bool = False
    # An additional TLS listener on this port that authenticates by client certificate, while
    # ``port`` keeps passwords (a fleet moving from passwords to certificates, or a control plane
    # that keeps its password on an internal address).
    cert_port: int | None = None
    persistence: bool = True
    # Mosquitto started as root drops to this user right after reading mosquitto.conf; the
    # generated files are given to it. "root" keeps root (tests in containers).
    run_as_user: str | None = None


def device_access(device_id: str, root: str = topics.DEFAULT_ROOT) -> dict[str, str]:
    """Topic -> ``read`` / ``write`` / ``readwrite``: everything a device may touch.

    The one statement of a device's rights, which the generated ACL and the embedded broker both
    enforce.
    """
    return {topics.device_topic(device_id, leaf, root): a for leaf, a in _DEVICE_ACCESS.items()}


def max_packet_bytes(root: str = topics.DEFAULT_ROOT) -> int:
    """Mosquitto's ``max_packet_size``: the largest PUBLISH the fleet sends, not one byte more.

    That is ``MAX_MESSAGE_BYTES`` of payload on the longest topic there is (a 64-character device
    id, the longest leaf), plus the packet id and the topic's length prefix. Mosquitto compares
    this limit with the fixed header's first byte plus the "remaining length" (not counting the
    bytes that encode the length), so that is what is counted here: a bigger packet makes the
    broker drop the connection that sent it.
    """
    longest_leaf = max(_DEVICE_ACCESS, key=len)  # every leaf of the fleet channel
    longest_topic = len(f"{root}/{'x' * 64}/{longest_leaf}".encode())
    return 1 + 2 + longest_topic + 2 + topics.MAX_MESSAGE_BYTES


# --- operator-managed identities -------------------------------------------------------------


@dataclass(frozen=True)
class LocalIdentities:
    """Lines of ``passwd.local`` and ``acl.local``, checked, to append to the generated files."""

    passwd: list[str]
    acl: list[str]

    @classmethod
    def none(cls) -> LocalIdentities:
        return cls([], [])


def read_local_identities(folder: Path, reserved: set[str]) -> LocalIdentities:
    """Parse and check the operator's ``passwd.local`` / ``acl.local`` (both optional).

    Refused with ``BrokerConfigError``: a name the registry owns (``reserved``: the control
    plane's and every device's), a malformed line, a ``pattern`` rule (it would apply to every
    identity, devices included) and topic rules before the first ``user`` line (Mosquitto applies
    those to anonymous clients).
    """
    passwd: list[str] = []
    acl: list[str] = []
    path = folder / LOCAL_PASSWD_NAME
    if path.exists():
        for n, raw in enumerate(_read(path), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            where = f"{path}:{n}"
            if not sep or not hashed.startswith("$7$"):
                raise BrokerConfigError(f"{where}: expected name:$7$... (use mosquitto_passwd)")
            _check_local_name(name, reserved, where)
            passwd.append(line)
    path = folder / LOCAL_ACL_NAME
    if path.exists():
        user: str | None = None
        for n, raw in enumerate(_read(path), 1):
            line = raw.strip()
            where = f"{path}:{n}"
            if not line or line.startswith("#"):
                continue
            words = line.split()
            if words[0] == "user" and len(words) == 2:
                user = words[1]
                _check_local_name(user, reserved, where)
                acl += ["", line]
            elif words[0] == "topic" and user is not None:
                if len(words) != 3 or words[1] not in _ACL_ACCESS:
                    raise BrokerConfigError(f"{where}: expected topic read|write|readwrite|deny T")
                acl.append(line)
            elif words[0] == "topic":
                raise BrokerConfigError(f"{where}: a topic rule must follow a 'user' line")
            else:
                raise BrokerConfigError(f"{where}: only 'user NAME' and 'topic ...' lines allowed")
    return LocalIdentities(passwd, acl)


def _read(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerConfigError(f"cannot read {path}: {exc}") from exc


def _check_local_name(name: str, reserved: set[str], where: str) -> None:
    if not _LOCAL_NAME_RE.match(name):
        raise BrokerConfigError(f"{where}: {name!r} must be 1-64 letters, digits, '.', '_', '-'")
    if name in reserved:
        raise BrokerConfigError(f"{where}: {name!r} is an identity of the device registry")


# --- rendering -------------------------------------------------------------------------------


def render_acl(
    settings: Settings, device_ids: list[str], local: LocalIdentities | None = None
) -> str:
    root = settings.mqtt.topic_root
    lines = [
        "# Generated by control-plane from the device registry. Do not edit: add identities to",
        f"# {LOCAL_ACL_NAME} instead. No 'pattern' rules and no anonymous section: an identity",
        "# not listed here gets nothing.",
        "",
        "# The control plane's own identity (one per replica): the whole fleet tree.",
    ]
    for identity in settings.mqtt_identities:
        lines += [f"user {identity}", f"topic readwrite {root}/#", ""]
    for device_id in device_ids:
        lines.append(f"user {device_id}")
        for topic, access in device_access(device_id, root).items():
            lines.append(f"topic {access} {topic}")
        lines.append("")
    if local and local.acl:
        lines += [f"# From {LOCAL_ACL_NAME} (operator-managed identities)", *local.acl, ""]
    return "\n".join(lines)


def render_passwd(
    settings: Settings, devices: list[tuple[str, str]], local: LocalIdentities | None = None
) -> str:
    hashed = hash_password(settings.mqtt.password.get_secret_value())
    lines = [f"{identity}:{hashed}" for identity in settings.mqtt_identities]
    lines += [f"{device_id}:{password_hash}" for device_id, password_hash in devices]
    lines += local.passwd if local else []
    return "\n".join(lines) + "\n"


def render_conf(
    out_dir: Path, options: ListenerOptions, topic_root: str = topics.DEFAULT_ROOT
) -> str:
    out_dir = out_dir.resolve()
    certificates = options.require_client_cert or options.cert_port is not None
    tls_asked = options.tls_cert or options.tls_key or certificates
    if tls_asked and not (options.tls_cert and options.tls_key):
        raise BrokerConfigError("TLS needs both a certificate and a key")
    if certificates and options.tls_ca is None:
        raise BrokerConfigError("client certificates need the CA that signs them (--tls-ca)")
    if options.cert_port is not None and options.cert_port == options.port:
        raise BrokerConfigError("--cert-port must differ from --port")
    lines = [
        "# Generated by `control-plane broker-config`. Regenerate rather than edit.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {out_dir / PASSWD_NAME}",
        f"acl_file {out_dir / ACL_NAME}",
        # Reported state and desired state are retained: keep them across broker restarts.
        f"persistence {'true' if options.persistence else 'false'}",
        f"persistence_location {out_dir / DATA_NAME}/",
        # Mosquitto writes its persistence file on a clean stop and every autosave_interval
        # seconds (30 min by default): a broker that crashes loses what was acknowledged since,
        # queued telemetry included. A minute bounds that window at little cost.
        "autosave_interval 60",
        # The largest message either side sends is a chunk and its envelope (MAX_MESSAGE_BYTES);
        # a client sending a bigger packet is disconnected. (message_size_limit, which drops such
        # a message silently, is deprecated in favour of this.)
        f"max_packet_size {max_packet_bytes(topic_root)}",
        "max_queued_messages 10000",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if options.run_as_user:
        lines.append(f"user {options.run_as_user}")
    lines += _listener(options, options.port, options.require_client_cert)
    if options.cert_port is not None:
        lines += _listener(options, options.cert_port, client_cert=True)
    return "\n".join(lines) + "\n"


def _listener(options: ListenerOptions, port: int, client_cert: bool) -> list[str]:
    lines = [
        "",
        f"listener {port} {options.bind}",
        # Per listener (in the global section Mosquitto ignores it): the client id becomes the
        # authenticated user name, so nobody can take over another identity's connection or
        # persistent session by claiming its client id.
        "use_username_as_clientid true",
    ]
    if options.tls_cert and options.tls_key:
        lines += [
            f"certfile {options.tls_cert.resolve()}",
            f"keyfile {options.tls_key.resolve()}",
            "tls_version tlsv1.2",
        ]
        if options.tls_ca:
            lines.append(f"cafile {options.tls_ca.resolve()}")
    if client_cert:
        # The certificate's CN is the identity (user name, hence client id); the password file
        # is not consulted on this listener, the ACL is.
        lines += ["require_certificate true", "use_identity_as_username true"]
    return lines


# --- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """Who the broker's files belong to: the user Mosquitto runs as, and its group."""

    uid: int
    gid: int
    name: str

    @classmethod
    def of_user(cls, user: str) -> Owner:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise BrokerConfigError(f"no such user {user!r} (--run-as-user)") from None
        return cls(entry.pw_uid, entry.pw_gid, user)

    @classmethod
    def of_file(cls, path: Path) -> Owner | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_uid, st.st_gid, str(st.st_uid))


def _give(path: Path, owner: Owner, strict: bool) -> None:
    """chown ``path`` to ``owner``; failing that (not root), at least to its group.

    ``strict``: raise when neither works (broker-config, told whom Mosquitto runs as). Otherwise
    (the control plane rewriting files on a registration) log it: the file is still written,
    because keeping the old one would keep a deleted device's access.
    """
    st = path.stat()
    if (st.st_uid, st.st_gid) == (owner.uid, owner.gid):
        return
    try:
        os.chown(path, owner.uid, owner.gid)
        return
    except PermissionError:
        pass
    try:
        os.chown(path, -1, owner.gid)
        return
    except PermissionError:
        message = (
            f"cannot give {path} to user/group {owner.name} (not root and not a member of group "
            f"{owner.gid}): Mosquitto may not be able to read it"
        )
    if strict:
        raise BrokerConfigError(message)
    logger.error("%s", message)


def _write_atomic(
    path: Path, text: str, mode: int = 0o640, owner: Owner | None = None, strict: bool = False
) -> None:
    """Replace ``path`` with ``text`` in one rename, with ``mode`` and ``owner`` set beforehand.

    Without an explicit owner the new file keeps the owner and group of the file it replaces, so
    files broker-config gave to Mosquitto's user stay readable by it after the control plane
    rewrites them.
    """
    owner = owner or Owner.of_file(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if owner is not None:
            _give(Path(tmp), owner, strict)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_registry_files(
    settings: Settings, session: Session, out_dir: Path, owner: Owner | None = None
) -> None:
    """(Re)write ``passwd`` and ``acl`` from the registry and the local files, atomically.

    Invalid local files raise ``BrokerConfigError`` and nothing is written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    devices = broker_credentials(session)
    reserved = {*settings.mqtt_identities, *(d for d, _ in devices)}
    local = read_local_identities(out_dir, reserved)
    strict = owner is not None
    passwd = render_passwd(settings, devices, local)
    acl = render_acl(settings, [d for d, _ in devices], local)
    _write_atomic(out_dir / PASSWD_NAME, passwd, 0o640, owner, strict)
    _write_atomic(out_dir / ACL_NAME, acl, 0o640, owner, strict)


def resolve_run_as_user(requested: str | None) -> str | None:
    """The user Mosquitto will run as when started by the user running this.

    Started as root, Mosquitto drops to ``user`` from its config, else to ``mosquitto``; so as
    root the default is ``mosquitto`` (written into the config, so that what the files were
    prepared for is what happens). Not root, it keeps running as whoever starts it.
    """
    if requested or os.geteuid() != 0:
        return requested
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        raise BrokerConfigError(
            "running as root: name the user Mosquitto drops to with --run-as-user "
            "(there is no 'mosquitto' user; 'root' keeps root, which is not advised)"
        ) from None
    return "mosquitto"


def write_broker_config(
    settings: Settings, session: Session, out_dir: Path, options: ListenerOptions
) -> Path:
    """Write all three files; returns the path of ``mosquitto.conf``.

    With ``options.run_as_user``, ``passwd`` and ``acl`` are given to that user and its group
    (mode 0640) and the persistence folder to that user (0700): Mosquitto started as root reads
    them only after dropping to it.
    """
    conf_text = render_conf(out_dir, options, settings.mqtt.topic_root)  # options checked first
    owner = Owner.of_user(options.run_as_user) if options.run_as_user else None
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / DATA_NAME
    data.mkdir(exist_ok=True)
    if owner is not None:
        os.chmod(data, 0o700)
        _give(data, owner, strict=True)
    write_registry_files(settings, session, out_dir, owner)
    conf = out_dir / CONF_NAME
    _write_atomic(conf, conf_text, mode=0o644)
    return conf


def files_the_broker_reads(out_dir: Path, options: ListenerOptions) -> tuple[list[Path], Path]:
    """(files Mosquitto opens after dropping privileges, folder it writes its database to)."""
    readable = [out_dir / PASSWD_NAME, out_dir / ACL_NAME]
    readable += [p for p in (options.tls_cert, options.tls_key, options.tls_ca) if p is not None]
    return [p.resolve() for p in readable], (out_dir / DATA_NAME).resolve()


def access_problems(user: str, readable: list[Path], writable: list[Path]) -> list[str]:
    """Which of these ``user`` cannot read (or write), checked by a shell running as ``user``.

    Only root can ask. Asking the kernel as that user, with its supplementary groups, is the only
    check that counts every directory on the way, group membership and ACLs the way Mosquitto
    will meet them after it drops privileges.
    """
    if os.geteuid() != 0 or user == "root":
        return []
    entry = pwd.getpwnam(user)
    groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
    script = (
        'r=$1; shift; for f in "$@"; do '
        'if [ "$r" -gt 0 ]; then [ -r "$f" ] || echo "cannot read $f"; r=$((r-1)); '
        'else [ -w "$f" ] && [ -x "$f" ] || echo "cannot write in $f"; fi; done'
    )
    argv = ["/bin/sh", "-c", script, "sh", str(len(readable)), *map(str, readable + writable)]
    result = subprocess.run(
        argv,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[entry.pw_gid, *groups],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    return [line for line in result.stdout.splitlines() if line]


def sync_registry_files(ctx: AppContext) -> None:
    """Rewrite the broker's password and ACL files and ask the broker to reread them.

    Called whenever a device is registered or deleted, and once at start, when
    ``mqtt.broker_config_dir`` is set; a no-op otherwise. If the operator's local files are
    invalid, the files are written without them (logged): a broken local file must not keep a
    deleted device's access alive.
    """
    settings = ctx.settings
    folder = settings.mqtt.broker_config_dir
    if folder is None:
        return
    with ctx.sessions() as session:
        try:
            write_registry_files(settings, session, folder)
        except BrokerConfigError as exc:
            logger.error("broker files written without local identities: %s", exc)
            _write_without_local(settings, session, folder)
    cmd = settings.mqtt.broker_reload_command
    if cmd:
        result = subprocess.run(shlex.split(cmd), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            logger.error("broker reload %r failed: %s", cmd, result.stderr.strip())
        else:
            logger.info("broker reloaded its password and ACL files")


def _write_without_local(settings: Settings, session: Session, folder: Path) -> None:
    devices = broker_credentials(session)
    _write_atomic(folder / PASSWD_NAME, render_passwd(settings, devices))
    _write_atomic(folder / ACL_NAME, render_acl(settings, [d for d, _ in devices]))
