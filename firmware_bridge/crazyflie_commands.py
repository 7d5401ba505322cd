"""CLI: ``nanofly crazyflie ACTION``: the nanofly app in the stock Crazyflie firmware.

``build`` compiles a policy into cf2.bin (crazyflie_build). Each action is one ``_add_*``
function in ``ACTIONS``; the heavy modules are imported inside the handlers."""
from __future__ import annotations

import json
import sys

from nanofly.policy.observation import ACTION_DIM, OBSERVATION_DIM


def _add_build(actions) -> None:
    b = actions.add_parser(
        "build", help="build cf2.bin: the stock Crazyflie firmware with the nanofly app and a policy",
        description="Write an out-of-tree app of the stock crazyflie-firmware into --out (the "
                    "nanofly controller, the policy runtime and the model compiled in), build it "
                    "with the firmware's make and arm-none-eabi-gcc and print the image's "
                    "Flash/RAM/CCM use and the controller's stack use. Flash the image with "
                    "`cfloader flash OUT/build/cf2.bin stm32-fw -w radio://...` or `make -C OUT "
                    "cload`. Supported firmware: releases 2025.12 and later.")
    b.add_argument("--crazyflie-base", default=None, metavar="PATH",
                   help="the firmware tree, a `git clone --recursive` of bitcraze/crazyflie-firmware "
                        "(default: $CRAZYFLIE_BASE)")
    b.add_argument("--policy", default=None, metavar="POLICY",
                   help="a policy.pt (exported into OUT/export) or an export directory (default: "
                        "the shipped models/crazyflie_hover_int8/policy.pt)")
    b.add_argument("--format", choices=("int8", "f32"), default="int8",
                   help="model format compiled in (default int8)")
    b.add_argument("--out", required=True, metavar="DIR",
                   help="app folder to write (new, empty, or an earlier one of this command, "
                        "whose objects are reused); the image is DIR/build/cf2.bin")
    b.add_argument("--uart", choices=("off", "uart1", "uart2"), default="off",
                   help="also serve `nanofly flash --port` on a deck UART at 115200 baud: uart1 "
                        "(USART3, PC10/PC11) or uart2 (USART2, PA2/PA3); off by default because "
                        "the Lighthouse, GPS and AI decks use them. The radio (app channel) "
                        "always serves it")
    b.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel compile jobs (default: the usable CPUs)")
    b.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    b.set_defaults(handler=cmd_build)


def _add_fly(actions) -> None:
    f = actions.add_parser(
        "fly", help="fly one supervised flight of the nanofly app over cflib",
        description="Check that the Crazyflie runs the nanofly app with a valid model and has a "
                    "position source, select the Kalman estimator and the out-of-tree "
                    "controller, arm, take off under PID (or the policy), hand over to the policy "
                    "for --duration s, land under PID and disarm. The nanofly log group and the "
                    "position estimate go to OUT/flight.csv and OUT/flight.png. Ctrl-C, a lost "
                    "link or an error disables the policy, stops the motors and disarms "
                    "(docs/crazyflie.md).")
    f.add_argument("--uri", required=True, metavar="URI",
                   help="cflib link URI: radio://0/80/2M/E7E7E7E7E7, usb://0, udp://HOST:PORT")
    f.add_argument("--height", type=float, default=0.5, metavar="M",
                   help="hover height above the start point, m (0.1..2.0, default 0.5)")
    f.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds the policy flies (default 10)")
    f.add_argument("--takeoff", choices=("pid", "policy"), default="pid",
                   help="who flies the climb: the stock PID (default) or the policy")
    f.add_argument("--position-source", choices=("flow", "lighthouse", "mocap"), default="flow",
                   help="Flow deck v2 (default), Lighthouse deck, or external position (mocap)")
    f.add_argument("--out", default="runs/flight", metavar="DIR",
                   help="where flight.csv and flight.png go (default runs/flight)")
    f.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    f.set_defaults(handler=cmd_fly)


def _add_sitl(actions) -> None:
    s = actions.add_parser(
        "sitl", help="a host stand-in for a Crazyflie with the nanofly app: model uploads over cflib",
        description="Run the nanofly app's link and model store (the same C as in cf2.bin: the "
                    "shared protocol core, nanofly_cf_link.c) on this host, with the model slots "
                    "in an emulated STM32F405 NOR flash kept in --flash-image, behind a CRTP peer "
                    "that cflib reaches over UDP. Prints its URI alone on one line (for `nanofly "
                    "flash EXPORT --uri URI` and `nanofly firmware status --uri URI`) and runs "
                    "until Ctrl-C or SIGTERM. Arming it through cflib makes uploads refused, as "
                    "on the Crazyflie.")
    s.add_argument("--flash-image", default=None, metavar="FILE",
                   help="the emulated flash (1 MiB; created when missing, kept across restarts; "
                        "default: a temporary file removed at exit)")
    s.add_argument("--default", default=None, metavar="EXPORT_DIR",
                   help="an export directory whose int8 model plays the compiled-in model (runs "
                        "when no flash slot holds a valid one; default: none) and sets the "
                        "observation/action sizes uploads must have (default "
                        f"{OBSERVATION_DIM} -> {ACTION_DIM}, the shipped model's)")
    s.add_argument("--port", type=int, default=0, help="UDP port (default: a free one)")
    s.set_defaults(handler=cmd_sitl)


ACTIONS = (_add_build, _add_fly, _add_sitl)


def register(sub) -> None:
    cf = sub.add_parser("crazyflie", help="the nanofly app in the stock Crazyflie firmware",
                        description="Fly nanofly policies on a real Crazyflie 2.x inside the "
                                    "stock firmware (out-of-tree controller app).")
    actions = cf.add_subparsers(dest="crazyflie_command", metavar="ACTION", required=True)
    for add in ACTIONS:
        add(actions)


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def format_summary(s: dict) -> str:
    lines = [f"{s['cf2_bin']} ({s['cf2_bin_bytes']} bytes), firmware {s['firmware']['version']} "
             f"({s['firmware']['revision']}), built in {s['build_wall_s']:.0f} s",
             f"model: {s['model']['format']} {'-'.join(map(str, s['model']['layer_sizes']))}, "
             f"{s['model']['bytes']} bytes, CRC-32 {s['model']['crc32']}, history "
             f"{s['model']['history_length']}, policy at {s['vehicle']['policy_rate_hz']} Hz "
             f"(from {s['model']['source']})"]
    for key, label in (("flash", "Flash"), ("ram", "RAM"), ("ccm", "CCM")):
        z = s["sizes"].get(key)
        if z:
            lines.append(f"{label:5} {z['used_bytes']:7d} / {z['total_bytes']} bytes "
                         f"({z['used_percent']:.0f} %), {z['free_bytes']} free")
    if not s["sizes"]:
        lines.append("Flash/RAM/CCM: not printed by this firmware's build")
    st = s["stack"]
    pol, ctl = st["policy_path"], st["controller_path"]
    if pol["bytes"] is not None:
        lines.append(f"stack: policy path {pol['bytes']} bytes ({' > '.join(pol['chain'])})")
    if ctl["bytes"] is not None:
        lines.append(f"stack: controllerOutOfTree {ctl['bytes']} bytes (policy or stock PID)")
    if "stabilizer_task_worst_bytes" in st:
        frames = ", ".join(f"{k} {v}" for k, v in st["stabilizer_frames"].items())
        size = st["stabilizer_stack_bytes"]
        lines.append(f"stack: stabilizer task {st['stabilizer_task_worst_bytes']} bytes through the "
                     f"controller ({frames}) of its {size} bytes "
                     f"({st['stabilizer_stack_definition']}); {st.get('free_bytes')} free, "
                     f"{st.get('free_bytes_after_context_save')} after a context save "
                     f"({st['context_save_bytes']} bytes)")
    unknown = sorted(set(pol.get("unknown_callees", [])))
    if unknown:
        lines.append(f"stack: not counted (library code without stack data): {', '.join(unknown)}")
    return "\n".join(lines)


def cmd_build(args) -> int:
    from .crazyflie_build import BuildFailed, BuildInputError, build

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        summary = build(args.crazyflie_base, args.policy, args.format, args.out, jobs=args.jobs,
                        progress=say, uart=args.uart)
    except BuildInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BuildFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def cmd_fly(args) -> int:
    from pathlib import Path

    from .crazyflie_fly import FlightError, fly

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:  # Ctrl-C: fly() disables the policy, stops and disarms on its way out
        summary = fly(args.uri, height=args.height, duration=args.duration, takeoff=args.takeoff,
                      position_source=args.position_source, out=Path(args.out), progress=say)
    except FlightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"flight {'completed' if summary['completed'] else 'ended early'}: "
              f"{summary.get('log_rows', 0)} log rows in {summary.get('log')}, plot {summary.get('plot')}")
    return 0


def cmd_sitl(args) -> int:
    import os
    import signal
    import tempfile
    import threading

    from nanofly.export.runtime import RuntimeBuildError

    from .client import read_export_blob
    from .crazyflie_standin import DEFAULT_ACT_DIM, DEFAULT_OBS_DIM, CrazyflieStandIn, StandInError

    if not 0 <= args.port <= 65535:
        print(f"error: --port must be a UDP port from 1 to 65535, got {args.port}; leave it out "
              f"to pick a free one", file=sys.stderr)
        return 2
    blob, obs_dim, act_dim = None, DEFAULT_OBS_DIM, DEFAULT_ACT_DIM
    if args.default is not None:
        try:
            from nanofly.export.blob import read_blob

            blob, _ = read_export_blob(args.default, "int8")
            info = read_blob(blob)
            obs_dim, act_dim = info.widths[0], info.widths[-1]
        except (OSError, ValueError) as exc:
            print(f"error: --default: {exc}", file=sys.stderr)
            return 2
    temp = None
    image = args.flash_image
    if image is None:
        temp = tempfile.TemporaryDirectory(prefix="nanofly-cf-sitl-")
        image = os.path.join(temp.name, "flash.bin")
    elif os.path.isdir(image):
        print(f"error: --flash-image {image} is a directory; name a file (created when missing)",
              file=sys.stderr)
        return 2
    try:
        standin = CrazyflieStandIn(image, default_blob=blob, obs_dim=obs_dim, act_dim=act_dim,
                                   port=args.port)
    except StandInError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeBuildError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        standin.start()
        m = standin.model()
        print(standin.uri, flush=True)
        where = "a temporary file" if temp else image
        print(f"Crazyflie stand-in (nanofly app link and model store, flash in {where}); running "
              f"model: {m.source}" + (f" slot {m.slot}" if m.slot is not None else "")
              + (f", CRC 0x{m.crc:08x}" if m.crc else ", none") + "; Ctrl-C stops it",
              file=sys.stderr, flush=True)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.close()
        if temp is not None:
            temp.cleanup()
    return 0
