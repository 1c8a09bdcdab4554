"""The `dermtwin` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from gateway import cli_scan, cli_status, models_cli
from gateway.cli_args import location
from gateway.payload_encoding import FORMATS as SAMPLES_FORMATS
from gateway.report import cli as report_cli
from gateway.sink import command as sink_command

DEFAULT_DB = Path(os.environ.get("DERMTWIN_DB", "var/gateway.sqlite3"))


class CliError(Exception):
    pass


# The gateway reads its registry when it starts (gateway/service.py).
RESTART_HINT = ("a running gateway sees this after a restart "
                "(sudo systemctl restart dermtwin)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dermtwin")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive whole number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive number")
    return value


def _add_replacement_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reassign", action="store_true",
                        help="move a device that is paired with another subject to this one")
    parser.add_argument("--reuse-subject", action="store_true",
                        help="give a subject that another device wears to this device (the "
                             "other device is unpaired; its samples are kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermtwin", description="dermtwin gateway: skin-patch BLE → digital twin → MQTT")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="log only warnings and errors (default: also state changes)")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line (ts, level, logger, msg, exc)")
    parser.add_argument("--version", action="version", version=f"dermtwin {_version()}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="gateway configuration (TOML); default: /etc/dermtwin/gateway.toml, "
                             "then ~/.config/dermtwin/gateway.toml. Options given here win")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_scan.add_parser(sub, DEFAULT_DB)
    cli_status.add_parser(sub, DEFAULT_DB)

    demo = sub.add_parser("demo", help="virtual patches → gateway → MQTT, with a live view")
    demo.add_argument("--patches", type=_positive_int, default=3, help="virtual patches (3)")
    demo.add_argument("--duration", type=_positive_float, default=60.0,
                      help="seconds to run before exiting (60); Ctrl-C stops earlier")
    demo.add_argument("--broker", metavar="URL",
                      help="mqtt://host:port of a running broker; default: start a private "
                           "mosquitto on a free loopback port")
    demo.add_argument("--summary", type=Path, metavar="FILE",
                      help="write a JSON summary here at the end")
    demo.add_argument("--workdir", type=Path, metavar="DIR",
                      help="keep the database and patch flash images here (default: temporary)")
    demo.add_argument("--gateway-id", default="demo", help="gateway id in MQTT topics (demo)")
    demo.add_argument("--no-live", action="store_true", help="no live table (plain progress)")
    demo.add_argument("--wide", action="store_true", default=None,
                      help="the full table (about 160 columns) instead of a card per subject")
    demo.add_argument("--homeassistant", nargs="?", const="homeassistant", metavar="PREFIX",
                      help="publish Home Assistant MQTT discovery configs (under PREFIX, "
                           "default homeassistant)")

    run = sub.add_parser("run", help="run the gateway against real or Bumble-attached radios "
                                     "(every option can also come from the config file)")
    run.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")
    run.add_argument("--broker", metavar="URL", help="mqtt://… or mqtts://… ([mqtt] broker)")
    run.add_argument("--username", help="[mqtt] username")
    run.add_argument("--password-env", metavar="VAR",
                     help="read the MQTT password from this environment variable "
                          "([mqtt] password_env or password_file)")
    run.add_argument("--ca-file", type=Path, help="[mqtt] ca_file")
    run.add_argument("--cert-file", type=Path, help="[mqtt] cert_file")
    run.add_argument("--key-file", type=Path, help="[mqtt] key_file")
    run.add_argument("--gateway-id", help="gateway id in MQTT topics ([gateway] id; gw1)")
    run.add_argument("--hci", metavar="TRANSPORT",
                     help="drive a controller through Bumble (usb:0, serial:/dev/ttyUSB0, "
                          "tcp-client:HOST:PORT) instead of BlueZ ([ble] hci)")
    run.add_argument("--max-connections", type=_positive_int,
                     help="BLE connection slots on the adapter ([gateway] max_connections; 5)")
    run.add_argument("--retention-days", type=_positive_float,
                     help="keep stored samples this long ([gateway] retention_days; 30)")
    run.add_argument("--archive-days", type=_positive_float,
                     help="keep 15-minute summaries of pruned samples this long "
                          "([gateway] archive_days; 730)")
    run.add_argument("--models-dir", type=Path, help="[gateway] models_dir")
    run.add_argument("--no-raw-samples", action="store_true", default=None,
                     help="do not publish raw samples on {subject}/samples (twins, deltas and "
                          "alerts only; [gateway] raw_samples = false)")
    run.add_argument("--samples-format", choices=SAMPLES_FORMATS,
                     help="zlib: {subject}/samples payloads compressed when smaller, MQTT 5 "
                          "Content Type application/zlib (docs/mqtt.md; [gateway] "
                          "samples_format; json)")
    run.add_argument("--location", type=location, metavar="LAT,LON",
                     help="the gateway's latitude,longitude in degrees (e.g. 45.5,-73.6): "
                          "enables the UV forecast and local-day UV doses ([gateway] location)")
    run.add_argument("--max-payload-bytes", type=_positive_int, metavar="N",
                     help="largest MQTT payload the broker accepts (mosquitto "
                          "message_size_limit); larger samples messages are split, other "
                          "messages parked. The broker's Maximum Packet Size is honoured anyway "
                          "([mqtt] max_payload_bytes)")
    run.add_argument("--homeassistant", nargs="?", const="homeassistant", metavar="PREFIX",
                     help="publish Home Assistant MQTT discovery configs (under PREFIX, "
                          "default homeassistant)")

    sim = sub.add_parser("simulate", help="virtual patches behind an HCI-over-TCP controller, "
                                          "for a gateway in another process")
    sim.add_argument("--patches", type=_positive_int, default=3)
    sim.add_argument("--hci-port", type=int, default=0, help="TCP port (default: a free one)")
    sim.add_argument("--workdir", type=Path, default=Path("var/simulator"),
                     help="registry.json, patches.json and patch flash images (var/simulator)")
    sim.add_argument("--backlog", type=int, default=0,
                     help="samples each patch holds at start, as if back from out of range")
    sim.add_argument("--fast", action="store_true",
                     help="sample skin temperature every 1 s and flush frames every 1 s")
    sim.add_argument("--pair-db", type=Path, metavar="DB",
                     help="also register the patches in this gateway database")

    prov = sub.add_parser("provision", help="write a patch's device id and key over USB serial "
                                            "and pair it with this gateway")
    prov.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyACM0")
    prov.add_argument("--device-id", help="16 hex chars (default: a new random id)")
    prov.add_argument("--key-file", type=Path,
                      help="32-byte key as 64 hex chars (default: a new random key)")
    prov.add_argument("--subject", help="pseudonymous subject id to pair with (default: "
                                        "provision only; pair later with `dermtwin pair`)")
    prov.add_argument("--skin-type", type=int, choices=range(1, 7), default=3)
    prov.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")
    prov.add_argument("--replace-identity", dest="replace_identity",
                      action="store_true",
                      help="replace the identity the board already has (pair it again after)")
    _add_replacement_flags(prov)

    flash = sub.add_parser("flash", help="copy the firmware build onto a patch over USB serial")
    flash.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyACM0")
    flash.add_argument("--build-dir", type=Path, default=Path("build/firmware"),
                       help="output of `make firmware` (build/firmware)")
    flash.add_argument("--source", action="store_true",
                       help="copy the .py sources instead of the .mpy build")
    flash.add_argument("--no-reset", action="store_true", help="do not soft-reset afterwards")
    flash.add_argument("--with-emulators", action="store_true",
                       help="also copy the chip emulators (a board without the sensor chips, "
                            "e.g. the virtual board)")
    flash.add_argument("--discard-old-log", action="store_true",
                       help="flash even if the patch holds unsent samples in an older log "
                            "format (they are lost)")

    devices = sub.add_parser("devices", help="list paired patches")
    devices.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")
    devices.add_argument("--json", action="store_true")

    pair = sub.add_parser("pair", help="register a provisioned patch with this gateway")
    pair.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")
    pair.add_argument("--device-id", required=True, help="16 hex chars (the patch's serial)")
    pair.add_argument("--key-file", type=Path, required=True,
                      help="file holding the 32-byte device key as 64 hex chars")
    pair.add_argument("--subject", required=True,
                      help="pseudonymous subject id (letters, digits, '-', '_'; no names)")
    pair.add_argument("--skin-type", type=int, choices=range(1, 7), default=3,
                      help="Fitzpatrick skin type 1–6 (3)")
    _add_replacement_flags(pair)

    models_cli.add_parser(sub)
    report_cli.add_parsers(sub)
    from gateway import watch
    watch.add_parser(sub)
    sink_command.add_parser(sub)
    unpair = sub.add_parser("unpair", help="forget a patch")
    unpair.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")
    unpair.add_argument("--device-id", required=True)

    from gateway import broker_config
    broker_config.add_subcommand(sub)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from simulation.demo import run_demo

    summary = asyncio.run(run_demo(
        args.patches, args.duration, broker_url=args.broker, summary_path=args.summary,
        workdir=args.workdir, live=not args.no_live, gateway_id=args.gateway_id,
        wide=args.wide, homeassistant_prefix=args.homeassistant))
    print(f"demo done: generated {summary['samples_generated']} samples, stored "
          f"{summary['samples_stored']}, published {summary['published']} MQTT messages; "
          f"revs {summary['last_rev']}")
    if args.summary:
        print(f"summary written to {args.summary}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulation.simulator import run_simulator

    if args.backlog < 0:
        raise CliError(f"--backlog {args.backlog}: must not be negative")
    asyncio.run(run_simulator(args.patches, args.workdir, hci_port=args.hci_port,
                              patch_config={1: 1, 6: 1} if args.fast else None,
                              backlog=args.backlog, pair_db=args.pair_db))
    return 0


def _open_store(db: Path):
    from gateway import store as store_mod

    db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return store_mod.Store(store_mod.connect(db))


def cmd_devices(args: argparse.Namespace) -> int:
    devices = _open_store(args.db).devices()
    if args.json:
        print(json.dumps([{"device_id": d.device_id, "subject": d.subject,
                           "skin_type": d.skin_type} for d in devices], indent=2))
        return 0
    if not devices:
        print(f"no paired patches in {args.db}")
    for d in devices:
        print(f"{d.device_id}  DT-{d.device_id[-4:].upper()}  subject={d.subject}  "
              f"skin_type={d.skin_type}")
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    from gateway.pairing import (
        SUBJECT_PATTERN,
        SUBJECT_RULE,
        PairingRefused,
        apply_pairing,
        plan_pairing,
    )

    device_id = args.device_id.lower()
    if not re.fullmatch(r"[0-9a-f]{16}", device_id):
        raise CliError(f"--device-id {args.device_id!r}: must be 16 hex characters")
    try:
        key = bytes.fromhex(args.key_file.read_text().strip())
    except (OSError, ValueError) as e:
        raise CliError(f"--key-file {args.key_file}: {e}") from e
    if len(key) != 32:
        raise CliError(f"--key-file {args.key_file}: key must be 32 bytes (64 hex chars)")
    if not SUBJECT_PATTERN.fullmatch(args.subject):
        raise CliError(f"--subject {args.subject!r}: {SUBJECT_RULE}")
    store = _open_store(args.db)
    try:
        plan = plan_pairing(store, device_id, key, args.subject, args.skin_type,
                            reassign=args.reassign, reuse_subject=args.reuse_subject)
        with store.transaction():
            apply_pairing(store, plan, int(time.time() * 1000))
    except PairingRefused as e:
        raise CliError(str(e)) from e
    for line in plan.replacements():
        print(f"replaced: {line}")
    print(f"paired {device_id} as subject {args.subject}")
    print(RESTART_HINT)
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    import secrets

    from gateway.pairing import SUBJECT_RULE, PairingRefused, validate_subject
    from gateway.provision import (
        DEVICE_ID_BYTES,
        IdentityRecord,
        ProvisionError,
        default_key_path,
        load_key_file,
        provision,
        validate_device_id,
    )
    from gateway.provision_record import KeyFileRecord, RegistryRecord

    try:
        if args.subject is not None:
            validate_subject(args.subject)
    except PairingRefused as e:
        raise CliError(f"--subject {args.subject!r}: {SUBJECT_RULE}") from e
    try:
        device_id = (validate_device_id(args.device_id) if args.device_id
                     else secrets.token_bytes(DEVICE_ID_BYTES).hex())
        key = load_key_file(args.key_file) if args.key_file else None
    except (PairingRefused, ProvisionError) as e:
        raise CliError(str(e)) from e
    record: IdentityRecord
    key_path = None
    if args.subject is not None:
        record = RegistryRecord(_open_store(args.db), args.subject, args.skin_type,
                                reassign=args.reassign, reuse_subject=args.reuse_subject)
    else:
        key_path = default_key_path(args.db, device_id)   # never the current directory
        record = KeyFileRecord(key_path)
    try:
        result = provision(args.port, device_id, key, replace_identity=args.replace_identity,
                           record=record)
    except (ProvisionError, PairingRefused) as e:
        raise CliError(str(e)) from e
    print(f"provisioned {args.port}: device {result.device_id} (DT-{result.device_id[-4:].upper()})"
          + ("; replaced the board's earlier identity" if result.replaced else ""))
    for line in result.replacements:
        print(f"replaced: {line}")
    if key_path is not None:
        print(f"key saved to {key_path} (mode 600); pair it with: dermtwin pair --device-id "
              f"{result.device_id} --key-file {key_path} --subject <pseudonymous id>")
        return 0
    print(f"paired {result.device_id} as subject {args.subject} in {args.db}")
    print(RESTART_HINT)
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    from gateway.progress_bar import flash_progress
    from gateway.provision import ProvisionError, flash

    try:
        with flash_progress() as progress:
            result = flash(args.port, None if args.source else args.build_dir,
                           source=args.source, progress=progress, soft_reset=not args.no_reset,
                           discard_old_log=args.discard_old_log,
                           with_emulators=args.with_emulators)
    except ProvisionError as e:
        raise CliError(str(e)) from e
    kind = "sources" if result.source else "files"
    print(f"flashed {result.files} {kind} ({result.bytes} bytes) to {result.port} in "
          f"{result.seconds:.1f} s" + (f" (board reads mpy {result.board_mpy})"
                                        if result.board_mpy else ""))
    if not result.aioble_on_board:
        from gateway.provision import AIOBLE_MISSING
        print(f"warning: {AIOBLE_MISSING}", file=sys.stderr)
    return 0


def cmd_unpair(args: argparse.Namespace) -> int:
    store = _open_store(args.db)
    with store.transaction():
        removed = store.unregister(args.device_id.lower())
    if not removed:
        raise CliError(f"--device-id {args.device_id}: not paired in {args.db}")
    print(f"unpaired {args.device_id}; its stored samples are kept")
    print(RESTART_HINT)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.inference import default_models_dir
    from gateway.mqtt.config import MqttConfig
    from gateway.service import Gateway, GatewayConfig
    from gateway.store import DatabaseCorrupt
    from gateway.store_recovery import check_is_database

    settings = args.settings
    where = f" or [mqtt] broker in {settings.path}" if settings.path else \
        " (or [mqtt] broker in /etc/dermtwin/gateway.toml)"
    broker = args.broker or settings.broker
    if not broker:
        raise CliError(f"no broker: give --broker URL{where}")
    if args.password_env and settings.password is not None:
        settings.password = None   # the command line wins
    mqtt = MqttConfig.from_url(
        broker, username=args.username or settings.username, password=settings.password,
        password_env=args.password_env, gateway_id=args.gateway_id or settings.gateway_id or "gw1",
        ca_file=args.ca_file or settings.ca_file, cert_file=args.cert_file or settings.cert_file,
        key_file=args.key_file or settings.key_file,
        max_payload_bytes=args.max_payload_bytes or settings.max_payload_bytes)
    args.db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_is_database(args.db)   # before the radio: the one-line answer to a wrong --db
    hci = args.hci or settings.hci
    raw_samples = (not args.no_raw_samples if args.no_raw_samples is not None
                   else settings.raw_samples if settings.raw_samples is not None else True)
    config = GatewayConfig(
        args.db, mqtt, args.models_dir or settings.models_dir or default_models_dir(),
        max_connections=args.max_connections or settings.max_connections or 5,
        retention_days=args.retention_days or settings.retention_days or 30.0,
        # by default summaries outlive raw samples by far: 730 days, or the retention if longer
        archive_days=(args.archive_days or settings.archive_days
                      or max(730.0, args.retention_days or settings.retention_days or 30.0)),
        publish_samples=raw_samples, location=args.location or settings.location,
        samples_format=args.samples_format or settings.samples_format or "json",
        homeassistant_prefix=args.homeassistant or settings.homeassistant)

    async def main() -> None:
        import signal

        from gateway.ble.availability import open_radio

        radio = await open_radio(hci)

        def new_gateway(damaged: str | None = None) -> Gateway:
            return Gateway(config, radio, damaged=damaged)

        gateway = new_gateway()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        while True:
            try:
                await gateway.run(stop)
                return
            except DatabaseCorrupt as e:   # the next Gateway moves the file aside
                logging.getLogger("gateway").error(
                    "%s; moving it aside and starting a fresh database", e)
                damaged = str(e)
            finally:
                gateway.close()
            gateway = new_gateway(damaged)

    asyncio.run(main())
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    from gateway.broker_config import run_command

    return run_command(args)


def cmd_watch(args: argparse.Namespace) -> int:
    from gateway.watch import cmd_watch as watch

    return watch(args)


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "simulate": cmd_simulate, "watch": cmd_watch,
            "provision": cmd_provision, "flash": cmd_flash, "devices": cmd_devices, "pair": cmd_pair,
            "unpair": cmd_unpair, "scan": cli_scan.run, "status": cli_status.run,
            "models": models_cli.cmd_models, "broker-config": cmd_broker_config}
COMMANDS.update(report=report_cli.cmd_report, export=report_cli.cmd_export)
COMMANDS.update(sink=sink_command.cmd_sink)


def _apply_config(args: argparse.Namespace) -> None:
    """Settings from the config file (gateway.config_file) where the command line is silent.
    Secrets are read only for `run`."""
    from gateway import config_file

    settings = config_file.load(args.config, resolve_secrets=args.command == "run")
    args.settings = settings
    if getattr(args, "db", DEFAULT_DB) is None:
        args.db = settings.db or DEFAULT_DB
    if getattr(args, "hci", "absent") is None and args.command == "scan":
        args.hci = settings.hci


def main(argv: list[str] | None = None) -> int:
    from gateway.log_setup import configure

    args = build_parser().parse_args(argv)
    configure(args.verbose, args.quiet, args.log_json, state_changes=args.command == "run")
    try:
        _apply_config(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except CliError as e:
        print(f"dermtwin {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  # the user sees one line; -vv shows the traceback
        from gateway.cli_errors import explain

        logging.getLogger("dermtwin").debug("%s failed", args.command, exc_info=True)
        print(f"dermtwin {args.command}: {explain(e, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
