"""CLI: ``nanofly crazyflie ACTION``: the nanofly app in the stock Crazyflie firmware.

``build`` compiles a policy into cf2.bin (crazyflie_build). Each action is one ``_add_*``
function in ``ACTIONS``; the heavy modules are imported inside the handlers."""
from __future__ import annotations

import json
import sys


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


ACTIONS = (_add_build, _add_fly)


def register(sub, bench_sub) -> None:
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
                        progress=say)
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
