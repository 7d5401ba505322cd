"""CLI: ``nanofly flash``, ``nanofly firmware build|emulate|status`` (the bridge benchmark is
bench/bench_bridge.py).

Kept light: pyserial, numpy and the rest are imported inside the handlers."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("flash", help="upload an exported policy to a board, verify and activate it",
                       description="Upload EXPORT_DIR/policy_<format>.bin over the serial bridge "
                                   "(--port: any pyserial URL) or a Crazyflie's radio/USB link "
                                   "(--uri: any cflib URI), verify it on the board (CRC, header, "
                                   "dimensions, finite weights) and make it the active model.")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="directory written by `nanofly export`")
    _add_link_arguments(p)
    p.add_argument("--format", choices=("int8", "f32"), default="int8", help="model format (default int8)")
    p.add_argument("--no-activate", action="store_true", help="stage and verify only")
    p.add_argument("--chunk-bytes", type=int, default=None, help="largest (and first) bytes per CHUNK; the upload halves it on lost "
                        "or damaged frames, down to 64, and grows it back (default: the "
                        "negotiated maximum)")
    p.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each reply (default 1)")
    p.add_argument("--retries", type=int, default=3,
                   help="resends per request before giving up, each waiting twice as long (default 3)")
    p.add_argument("--baud", type=int, default=115200, help="baud rate for real serial ports")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=cmd_flash)

    fw = sub.add_parser("firmware", help="bridge firmware: build, run on QEMU, query a board")
    fw_sub = fw.add_subparsers(dest="firmware_command", metavar="ACTION", required=True)

    b = fw_sub.add_parser("build", help="build the STM32F405 firmware (make + arm-none-eabi-gcc)")
    b.add_argument("--out", default=None, help="build directory (default: firmware/build or ~/.cache)")
    b.add_argument("--export-c", default=None, help="policy runtime sources (default: the package's export/c)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=cmd_build)

    e = fw_sub.add_parser("emulate", help="run the firmware on QEMU netduinoplus2 and print its port URL")
    e.add_argument("--elf", default=None, help="firmware to run (default: build it)")
    e.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    e.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl+C)")
    e.set_defaults(handler=cmd_emulate)

    s = fw_sub.add_parser("status", help="print a board's HELLO and STATUS")
    _add_link_arguments(s)
    s.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for a reply (default 1)")
    s.add_argument("--retries", type=int, default=2, help="resends before giving up (default 2)")
    s.add_argument("--baud", type=int, default=115200)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(handler=cmd_status)



def _add_link_arguments(parser) -> None:
    """--port URL (pyserial) or --uri URI (cflib): exactly one."""
    link = parser.add_mutually_exclusive_group(required=True)
    link.add_argument("--port", metavar="URL",
                      help="pyserial URL: /dev/ttyUSB0, socket://127.0.0.1:PORT, rfc2217://host:port")
    link.add_argument("--uri", metavar="URI",
                      help="cflib URI of a Crazyflie running the nanofly app (CRTP app channel): "
                           "radio://0/80/2M/E7E7E7E7E7, usb://0, udp://127.0.0.1:PORT "
                           "(`nanofly crazyflie sitl`)")


def _link_url(args) -> str:
    """The link to open, or ValueError for a --port that is a cflib URI (or the reverse)."""
    from .crtp_link import CFLIB_SCHEMES, is_cflib_uri

    if args.uri is not None:
        if not is_cflib_uri(args.uri):
            raise ValueError(f"--uri {args.uri!r} is not a cflib URI (it starts with one of "
                             f"{', '.join(CFLIB_SCHEMES)}); for a serial port use --port")
        return args.uri
    if is_cflib_uri(args.port):
        raise ValueError(f"--port {args.port!r} is a cflib URI; pass it as --uri {args.port}")
    return args.port


class _ProgressBar:
    """One line on stderr: bar, bytes, rate, retries."""

    def __init__(self, stream=sys.stderr, width: int = 30):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self._last_pct = -1

    def __call__(self, progress) -> None:
        done, total = progress.sent_bytes, progress.total_bytes
        frac = done / total if total else 1.0
        pct = int(frac * 100)
        if not self.tty and pct // 25 == self._last_pct // 25 and done < total:
            return  # not a terminal: a line per quarter
        self._last_pct = pct
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = (f"[{bar}] {done / 1024:7.1f}/{total / 1024:.1f} KiB  "
                f"{progress.rate_bytes_per_s / 1024:6.1f} KiB/s  chunk {progress.chunk_bytes:4d} B  "
                f"retries {progress.retries}"
                + (f"  reconnects {progress.reconnects}" if progress.reconnects else ""))
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._last_pct >= 0:
            self.stream.write("\n")
            self._last_pct = -1

    def say(self, message: str) -> None:
        """A line of its own, also while the bar is drawn (the bar goes on below it)."""
        self.finish()
        _say(message, self.stream)


def _say(message: str, stream=None) -> None:
    """What the command waits for, on stderr (stdout stays for results and --json)."""
    stream = sys.stderr if stream is None else stream
    stream.write(message + "\n")
    stream.flush()


# check_link_options' names for this CLI's flags
_FLAG_NAMES = {"timeout_s": "--timeout", "retries": "--retries", "chunk_bytes": "--chunk-bytes",
               "baudrate": "--baud"}


def _chunk_summary(chunking: dict) -> str:
    """What the adaptive chunk size did, when it had to adapt (nothing on a clean link)."""
    if not chunking.get("chunks_lost"):
        return ""
    return (f"; damaged link: {chunking['chunks_lost']} chunks lost, chunk size "
            f"{chunking['chunk_bytes_smallest_used']}-{chunking['chunk_bytes_max']} B "
            f"(mean {chunking['chunk_bytes_mean'] or 0:.0f} B)")


def cmd_flash(args) -> int:
    from . import protocol as P
    from .client import (BridgeClient, LinkError, check_link_options, format_error_warning,
                         read_export_blob, upload_model)

    try:
        check_link_options(timeout_s=args.timeout, retries=args.retries,
                           chunk_bytes=args.chunk_bytes, baudrate=args.baud, names=_FLAG_NAMES)
        url = _link_url(args)
        blob, model_id = read_export_blob(args.export_dir, args.format)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warning = format_error_warning(args.export_dir, args.format)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    bar = None if args.json else _ProgressBar()
    try:
        with BridgeClient(url, timeout_s=args.timeout, retries=args.retries, baudrate=args.baud,
                          on_wait=bar.say if bar else _say) as client:
            result = upload_model(client, blob, args.format, model_id=model_id,
                                  chunk_bytes=args.chunk_bytes, activate=not args.no_activate,
                                  progress=bar)
            status = client.status()
    except (P.ProtocolError, OSError) as exc:
        if bar:
            bar.finish()
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, LinkError):
            if args.uri is not None:
                print("hint: check the URI and that the Crazyflie runs the nanofly app "
                      "(`nanofly firmware status --uri URI`)", file=sys.stderr)
            else:
                print("hint: check the port URL and that the board runs the bridge firmware "
                      "(`nanofly firmware status --port URL`)", file=sys.stderr)
        return 1
    if bar:
        bar.finish()
    out = result.as_dict()
    out["active_crc_hex"] = f"0x{status.active_crc:08x}"
    if warning:
        out["warnings"] = [warning]
    if args.json:
        print(json.dumps(out))
    else:
        verb = "active" if result.activated else "staged and verified (not activated)"
        print(f"{args.format} model {result.size_bytes} bytes, CRC {out['crc_hex']}: {verb}; "
              f"{result.wall_s:.2f} s, {out['rate_bytes_per_s'] / 1024:.1f} KiB/s, wire overhead "
              f"{result.overhead:.3f}, retries {result.retries}, reconnects {result.reconnects}"
              + _chunk_summary(result.chunking))
    return 0


def cmd_build(args) -> int:
    from .firmware import FirmwareBuildError, build_firmware, firmware_size

    try:
        elf = build_firmware(args.out, export_c=args.export_c, quiet=args.json)
    except FirmwareBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = firmware_size(elf)
    if args.json:
        print(json.dumps({"elf": str(elf), **size}))
    else:
        print(f"{elf}\nflash {size['flash_bytes']} bytes, SRAM {size['sram_bytes']} of "
              f"{size['sram_limit_bytes']} bytes")
    return 0


def cmd_emulate(args) -> int:
    import time

    import math

    from .emulator import EmulatedBoard, EmulatorError
    from .firmware import FirmwareBuildError

    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        print(f"error: --seconds must be a positive number, got {args.seconds}; leave it out to "
              f"run until Ctrl+C", file=sys.stderr)
        return 2
    if args.port is not None and not 1 <= args.port <= 65535:
        print(f"error: --port must be a TCP port from 1 to 65535, got {args.port}; leave it out "
              f"to pick a free one", file=sys.stderr)
        return 2
    try:
        board = EmulatedBoard(args.elf, port=args.port, lifetime_s=args.seconds).start()
    except (EmulatorError, FirmwareBuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(board.url, flush=True)
        print(f"QEMU netduinoplus2 running {board.elf} (pid {board.pid}); Ctrl+C stops it",
              file=sys.stderr, flush=True)
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while board.alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


def cmd_status(args) -> int:
    from . import protocol as P
    from .client import BridgeClient, check_link_options

    try:
        check_link_options(timeout_s=args.timeout, retries=args.retries, baudrate=args.baud,
                           names=_FLAG_NAMES)
        url = _link_url(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with BridgeClient(url, timeout_s=args.timeout, retries=args.retries,
                          baudrate=args.baud, on_wait=_say) as client:
            hello, status = client.hello(), client.status()
    except (P.ProtocolError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"hello": hello.to_dict(), "status": status.to_dict()}))
        return 0
    model = (f"{status.active_format} model, {status.active_size} bytes, CRC 0x{status.active_crc:08x}, "
             f"id 0x{status.active_model_id:08x}" if status.has_model else "none")
    since = "never" if status.ms_since_heartbeat is None else f"{status.ms_since_heartbeat} ms ago"
    print(f"firmware {hello.firmware_version}, protocol {hello.protocol_version}"
          f"{' (emulated)' if hello.emulated else ''}, sysclk {hello.sysclk_hz / 1e6:.0f} MHz"
          f"{'' if hello.emulated or hello.pll_locked else ' (PLL not locked!)'}\n"
          f"capabilities: obs {hello.observation_dim} -> action {hello.action_dim}, formats "
          f"{','.join(hello.formats)}, max model {hello.max_model_bytes} bytes, max payload "
          f"{hello.max_payload} bytes, counter: {P.COUNTER_NAMES.get(hello.counter_kind)}\n"
          f"active model: {model}\n"
          f"staging: {status.staging_state} ({status.staging_received}/{status.staging_size} bytes)\n"
          f"armed: {status.armed}, failsafe tripped: {status.failsafe_tripped} "
          f"({status.failsafe_trips} total), last heartbeat: {since}, motors "
          f"{' '.join(f'{m:.3f}' for m in status.motors)}\n"
          f"uptime {status.uptime_ms} ms, frames ok {status.frames_ok}, bad {status.frames_bad}, "
          f"too long {status.frames_too_long}, rx overflows {status.rx_overflows}, errors sent "
          f"{status.errors_sent}, inferences {status.inferences} (last {status.last_inference_ticks} ticks)")
    return 0
