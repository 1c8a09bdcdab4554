"""`dermtwin broker-config`: a mosquitto configuration for a dermtwin deployment.

Three roles (docs/security.md):
- gateway `gw`: writes its own tree `dermtwin/v1/{gw}/#`, reads only its own
  `{subject}/desired` and `cmd`, answers `cmd` requests under `dermtwin/reply/{gw}/#`;
- clinic: for every gateway of the deployment, reads its tree and its replies and writes
  `{subject}/desired` and `cmd`;
- subscriber: reads the gateways' trees, optionally only some kinds (`twin`, `samples`, …).

Writes, in a 0700 directory, every file 0600: `mosquitto.conf` (listeners, no anonymous
access), `acl` and `passwd` (mosquitto's own formats; `$7$` PBKDF2-SHA512 hashes as
`mosquitto_passwd` writes them) and, for each account given a new password,
`credentials/{name}.password`. Passwords are never printed or logged; an account already in
`passwd` keeps its password unless rotated. A TLS listener that requires client certificates
(the certificate's CN is the account name) is written when the certificate files are given.
With `--bridge-to`, a bridge section forwards the gateways' trees to a central broker
(gateway/broker_bridge.py, docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gateway.broker_bridge import (
    DEFAULT_QUEUE_MESSAGES,
    Bridge,
    BridgeConfigError,
    bridge_section,
    queue_lines,
    read_bridge_password,
)
from gateway.mqtt.config import GATEWAY_ID_PATTERN
from gateway.mqtt.topics import TOPIC_PREFIX
from gateway.private_files import open_to_others, private_dir, write_private

ROLE_GATEWAY = "gateway"
ROLE_CLINIC = "clinic"
ROLE_SUBSCRIBER = "subscriber"
# Where a gateway may answer `cmd` requests: outside every gateway's tree, one branch per
# gateway, so a clinic's Response Topic names the gateway (docs/mqtt.md, Requests).
REPLY_PREFIX = "dermtwin/reply"
# What a subscriber may be limited to: the per-subject message kinds, and the gateway's state.
SUBJECT_KINDS = ("meta", "twin", "delta", "samples", "alert", "reported")
GATEWAY_KINDS = ("state",)
SUBSCRIBER_KINDS = GATEWAY_KINDS + SUBJECT_KINDS

# mosquitto 2.x `$7$` password hashes, as mosquitto_passwd 2.0 writes them (PW_DEFAULT_ITERATIONS).
PASSWORD_HASH_ITERATIONS = 101
PASSWORD_SALT_BYTES = 12
PASSWORD_BYTES = 24          # secrets.token_urlsafe: 32 characters, 192 bits

DEFAULT_LISTEN = "127.0.0.1:1883"
DEFAULT_TLS_LISTEN = "0.0.0.0:8883"
CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"
PASSWD_NAME = "passwd"
CREDENTIALS_DIR = "credentials"
DATA_DIR = "data"


class BrokerConfigError(ValueError):
    """A broker-config input is invalid; the message names the option."""


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    kinds: tuple[str, ...] = ()     # subscriber only: what it may read (empty: everything)

    def __post_init__(self) -> None:
        if not GATEWAY_ID_PATTERN.match(self.name):
            raise BrokerConfigError(
                f"account {self.name!r}: must be 1-64 letters, digits, '.', '_' or '-'")
        if self.role not in (ROLE_GATEWAY, ROLE_CLINIC, ROLE_SUBSCRIBER):
            raise BrokerConfigError(f"account {self.name!r}: unknown role {self.role!r}")
        unknown = [k for k in self.kinds if k not in SUBSCRIBER_KINDS]
        if unknown:
            raise BrokerConfigError(
                f"subscriber {self.name!r}: unknown kind {unknown[0]!r} "
                f"(known: {', '.join(SUBSCRIBER_KINDS)})")
        if self.kinds and self.role != ROLE_SUBSCRIBER:
            raise BrokerConfigError(f"account {self.name!r}: only subscribers are limited to kinds")


@dataclass(frozen=True)
class Deployment:
    """The accounts of one broker; every clinic and subscriber covers every gateway."""

    accounts: tuple[Account, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for account in self.accounts:
            if account.name in seen:
                raise BrokerConfigError(f"account {account.name!r}: given twice")
            seen.add(account.name)
        if not self.gateways:
            raise BrokerConfigError("--gateway: at least one gateway is needed")

    @classmethod
    def of(cls, gateways: list[str] | tuple[str, ...], clinics: list[str] | tuple[str, ...] = (),
           subscribers: list[str] | tuple[str, ...] = ()) -> Deployment:
        """Subscribers as `name` or `name:kind,kind` (e.g. `dashboard:twin,samples`)."""
        accounts = [Account(g, ROLE_GATEWAY) for g in gateways]
        accounts += [Account(c, ROLE_CLINIC) for c in clinics]
        accounts += [parse_subscriber(s) for s in subscribers]
        return cls(tuple(accounts))

    @property
    def gateways(self) -> list[str]:
        return [a.name for a in self.accounts if a.role == ROLE_GATEWAY]


def parse_subscriber(text: str) -> Account:
    name, _, kinds = text.partition(":")
    return Account(name, ROLE_SUBSCRIBER,
                   tuple(k.strip() for k in kinds.split(",") if k.strip()) if kinds else ())


def gateway_tree(gw: str) -> str:
    return f"{TOPIC_PREFIX}/{gw}"


def reply_tree(gw: str) -> str:
    return f"{REPLY_PREFIX}/{gw}"


def acl_rules(account: Account, gateways: list[str]) -> list[str]:
    """mosquitto `acl_file` lines for one account (without its `user` line)."""
    if account.role == ROLE_GATEWAY:
        tree = gateway_tree(account.name)
        return [f"topic write {tree}/#", f"topic read {tree}/+/desired", f"topic read {tree}/cmd",
                f"topic write {reply_tree(account.name)}/#"]
    rules: list[str] = []
    for gw in gateways:
        tree = gateway_tree(gw)
        if account.role == ROLE_CLINIC:
            rules += [f"topic read {tree}/#", f"topic write {tree}/+/desired",
                      f"topic write {tree}/cmd", f"topic read {reply_tree(gw)}/#"]
        elif not account.kinds:
            rules.append(f"topic read {tree}/#")
        else:
            rules += [f"topic read {tree}/{kind}" if kind in GATEWAY_KINDS
                      else f"topic read {tree}/+/{kind}" for kind in account.kinds]
    return rules


def acl_text(deployment: Deployment) -> str:
    lines = ["# dermtwin broker ACL, written by `dermtwin broker-config`; roles: "
             "docs/security.md.", "# Anything not granted here is denied."]
    for account in deployment.accounts:
        limited = f" ({', '.join(account.kinds)} only)" if account.kinds else ""
        lines += ["", f"# {account.role}{limited}", f"user {account.name}",
                  *acl_rules(account, deployment.gateways)]
    return "\n".join(lines) + "\n"


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_password_line(username: str, password: str, salt: bytes | None = None) -> str:
    """One line of a mosquitto 2.x password file, the format `mosquitto_passwd` writes."""
    if not username or ":" in username:
        raise BrokerConfigError(f"broker username {username!r}: must be non-empty, without ':'")
    salt = salt if salt is not None else os.urandom(PASSWORD_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PASSWORD_HASH_ITERATIONS)
    salt_b64 = base64.b64encode(salt).decode()
    digest_b64 = base64.b64encode(digest).decode()
    return f"{username}:$7${PASSWORD_HASH_ITERATIONS}${salt_b64}${digest_b64}"


def parse_listen(text: str, option: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BrokerConfigError(f"{option} {text!r}: must be ADDRESS:PORT, port 1..65535")
    return host.strip("[]"), int(port_text)


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path       # the CA that signs client certificates
    cert_file: Path     # the broker's certificate
    key_file: Path      # the broker's private key

    def __post_init__(self) -> None:
        for name, path in (("--tls-ca", self.ca_file), ("--tls-cert", self.cert_file),
                           ("--tls-key", self.key_file)):
            if not Path(path).is_file():
                raise BrokerConfigError(f"{name} {str(path)!r}: no such file")


def mosquitto_conf(out_dir: Path, listen: tuple[str, int], tls: TlsFiles | None,
                   tls_listen: tuple[str, int], run_as: str | None = None,
                   bridge: Bridge | None = None, gateways: list[str] | None = None) -> str:
    out = out_dir.resolve()
    lines = ["# dermtwin broker, written by `dermtwin broker-config` (docs/security.md).",
             "# No anonymous clients; every account is limited by the ACL.",
             "per_listener_settings false",
             "allow_anonymous false",
             f"password_file {out / PASSWD_NAME}",
             f"acl_file {out / ACL_NAME}",
             "persistence true",
             f"persistence_location {out / DATA_DIR}/",
             "log_dest stderr",
             "log_type error", "log_type warning", "log_type notice", "log_type information",
             "connection_messages true"]
    if run_as is not None:
        lines.append(f"user {run_as}")
    lines += ["", "# Plain MQTT with username and password: keep it on loopback (a local "
              "bridge, the gateway on the same host).", f"listener {listen[1]} {listen[0]}"]
    tls_lines = [
        f"listener {tls_listen[1]} {tls_listen[0]}",
        f"cafile {tls.ca_file.resolve() if tls else '/path/to/client-ca.pem'}",
        f"certfile {tls.cert_file.resolve() if tls else '/path/to/broker.pem'}",
        f"keyfile {tls.key_file.resolve() if tls else '/path/to/broker.key'}",
        "require_certificate true",
        "use_identity_as_username true"]
    lines += ["", "# TLS: clients must present a certificate signed by cafile; its CN is the "
              "account name the ACL applies to."]
    if tls is not None:
        lines += tls_lines
    else:
        lines += ["# Disabled: run broker-config with --tls-ca, --tls-cert and --tls-key."]
        lines += ["#" + line for line in tls_lines]
    if bridge is not None:
        gws = gateways or []
        lines[lines.index("persistence true"):lines.index("persistence true")] = \
            queue_lines(bridge)
        lines += ["", *bridge_section(bridge, gws,
                                      [(gateway_tree(gw), reply_tree(gw)) for gw in gws])]
    return "\n".join(lines) + "\n"


def read_password_file(path: Path) -> dict[str, str]:
    """username -> its whole line, from an existing mosquitto password file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, _ = line.partition(":")
        if sep and name and not line.startswith("#"):
            entries[name] = line
    return entries


@dataclass
class BrokerConfigResult:
    out_dir: Path
    new_credentials: dict[str, Path] = field(default_factory=dict)   # account -> password file
    kept: list[str] = field(default_factory=list)                    # accounts that kept theirs
    dropped: list[str] = field(default_factory=list)                 # in passwd, not any more
    tls: bool = False
    bridge: Bridge | None = None

    @property
    def conf_path(self) -> Path:
        return self.out_dir / CONF_NAME


def write_broker_config(out_dir: Path, deployment: Deployment, *,
                        listen: tuple[str, int] = parse_listen(DEFAULT_LISTEN, "--listen"),
                        tls: TlsFiles | None = None,
                        tls_listen: tuple[str, int] = parse_listen(DEFAULT_TLS_LISTEN,
                                                                   "--tls-listen"),
                        rotate: tuple[str, ...] = (), run_as: str | None = None,
                        passwords: dict[str, str] | None = None,
                        bridge: Bridge | None = None) -> BrokerConfigResult:
    """Write the configuration; `passwords` fixes some accounts' passwords (else generated,
    or kept from an existing passwd)."""
    names = {a.name for a in deployment.accounts}
    for name in rotate:
        if name not in names:
            raise BrokerConfigError(f"--rotate {name!r}: not an account of this deployment")
    if out_dir.is_dir() and open_to_others(out_dir):
        raise BrokerConfigError(
            f"--out {str(out_dir)!r}: exists and others may enter it (mode "
            f"{out_dir.stat().st_mode & 0o777:o}); give a new directory, or chmod 700 it")
    out_dir = private_dir(out_dir)
    private_dir(out_dir / DATA_DIR, tighten=True)
    existing = read_password_file(out_dir / PASSWD_NAME)
    result = BrokerConfigResult(out_dir, tls=tls is not None, bridge=bridge,
                                dropped=sorted(set(existing) - names))
    lines = []
    for account in deployment.accounts:
        name = account.name
        given = (passwords or {}).get(name)
        if given is None and name in existing and name not in rotate:
            lines.append(existing[name])
            result.kept.append(name)
            continue
        password = given if given is not None else generate_password()
        lines.append(mosquitto_password_line(name, password))
        credentials = private_dir(out_dir / CREDENTIALS_DIR, tighten=True) / f"{name}.password"
        write_private(credentials, password + "\n")
        result.new_credentials[name] = credentials
    write_private(out_dir / PASSWD_NAME, "\n".join(lines) + "\n")
    write_private(out_dir / ACL_NAME, acl_text(deployment))
    write_private(out_dir / CONF_NAME, mosquitto_conf(out_dir, listen, tls, tls_listen, run_as,
                                                      bridge, deployment.gateways))
    return result


# -- the command ----------------------------------------------------------------------


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "broker-config", help="write mosquitto.conf, ACL and password file for the broker roles",
        description="Write a mosquitto configuration with one account per gateway, clinic and "
                    "subscriber (roles: docs/security.md). Files are 0600 in a 0700 directory; "
                    "new passwords go to DIR/credentials/NAME.password, never to the terminal.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory to write (created 0700)")
    p.add_argument("--gateway", action="append", default=[], metavar="ID",
                   help="a gateway account; its id is its topic level (repeat for more)")
    p.add_argument("--clinic", action="append", default=[], metavar="NAME",
                   help="a clinic account: reads every gateway, writes desired and cmd")
    p.add_argument("--subscriber", action="append", default=[], metavar="NAME[:KINDS]",
                   help="a read-only account, optionally limited to kinds, e.g. "
                        f"dashboard:twin,samples (kinds: {', '.join(SUBSCRIBER_KINDS)})")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"plain MQTT listener, passwords only ({DEFAULT_LISTEN})")
    p.add_argument("--tls-listen", default=DEFAULT_TLS_LISTEN, metavar="ADDR:PORT",
                   help=f"TLS listener requiring client certificates ({DEFAULT_TLS_LISTEN})")
    p.add_argument("--tls-ca", type=Path, help="CA that signs the clients' certificates")
    p.add_argument("--tls-cert", type=Path, help="the broker's certificate")
    p.add_argument("--tls-key", type=Path, help="the broker's private key")
    p.add_argument("--rotate", action="append", default=[], metavar="NAME",
                   help="give this existing account a new password")
    p.add_argument("--run-as", metavar="USER",
                   help="mosquitto's `user` setting (the account that must own these files)")
    b = p.add_argument_group("bridge to a central broker (docs/scale-out.md)")
    b.add_argument("--bridge-to", metavar="HOST:PORT",
                   help="forward the gateways' trees to this central broker over TLS and bring "
                        "their desired and cmd back")
    b.add_argument("--bridge-ca", type=Path, metavar="FILE",
                   help="CA that signed the central broker's certificate (required)")
    b.add_argument("--bridge-cert", type=Path, metavar="FILE",
                   help="client certificate the bridge presents (its CN: the central account)")
    b.add_argument("--bridge-key", type=Path, metavar="FILE", help="its private key")
    b.add_argument("--bridge-username", metavar="NAME",
                   help="the bridge's account on the central broker (with a password)")
    b.add_argument("--bridge-password-file", type=Path, metavar="FILE",
                   help="its password (first line; the central broker-config's "
                        "credentials/NAME.password); copied into the 0600 mosquitto.conf")
    b.add_argument("--bridge-queue-messages", type=int, default=DEFAULT_QUEUE_MESSAGES,
                   metavar="N", help="messages the local broker queues while the central one "
                                     f"is away ({DEFAULT_QUEUE_MESSAGES})")


def bridge_from_args(args: argparse.Namespace) -> Bridge | None:
    given = [name for name in ("bridge_ca", "bridge_cert", "bridge_key", "bridge_username",
                               "bridge_password_file") if getattr(args, name) is not None]
    if args.bridge_to is None:
        if given:
            raise BridgeConfigError(f"--{given[0].replace('_', '-')}: needs --bridge-to")
        return None
    if args.bridge_ca is None:
        raise BridgeConfigError("--bridge-to: give --bridge-ca (the bridge speaks TLS only)")
    password = (read_bridge_password(args.bridge_password_file)
                if args.bridge_password_file is not None else None)
    return Bridge(parse_listen(args.bridge_to, "--bridge-to"), args.bridge_ca,
                  username=args.bridge_username, password=password,
                  cert_file=args.bridge_cert, key_file=args.bridge_key,
                  queue_messages=args.bridge_queue_messages)


def run_command(args: argparse.Namespace) -> int:
    tls_args = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(a is not None for a in tls_args) and not all(a is not None for a in tls_args):
        raise BrokerConfigError("--tls-ca, --tls-cert, --tls-key: give all three or none")
    tls = TlsFiles(*tls_args) if args.tls_ca is not None else None
    deployment = Deployment.of(args.gateway, args.clinic, args.subscriber)
    result = write_broker_config(
        args.out, deployment, listen=parse_listen(args.listen, "--listen"), tls=tls,
        tls_listen=parse_listen(args.tls_listen, "--tls-listen"), rotate=tuple(args.rotate),
        run_as=args.run_as, bridge=bridge_from_args(args))
    print(f"wrote {result.conf_path}, {result.out_dir / ACL_NAME}, "
          f"{result.out_dir / PASSWD_NAME} (mode 600)")
    for name, path in result.new_credentials.items():
        print(f"new password for {name}: in {path} (mode 600)")
    if result.kept:
        print(f"kept the passwords of {', '.join(result.kept)}")
    if result.dropped:
        print(f"removed {', '.join(result.dropped)} (no longer given)")
    if not result.tls:
        print("no TLS listener (give --tls-ca, --tls-cert, --tls-key): keep the plain "
              "listener on loopback")
    if result.bridge is not None:
        host, port = result.bridge.address
        print(f"bridge to {host}:{port} over TLS for {', '.join(deployment.gateways)} "
              "(docs/scale-out.md)")
    print(f"start: mosquitto -c {result.conf_path}")
    return 0
