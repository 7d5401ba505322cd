"""Arguments of ``nanofly bench sim`` (kept light: no numba import)."""


def add_arguments(parser) -> None:
    parser.add_argument("--envs", type=int, action="append",
                        help="environment count (repeatable; default 1, 64, 1024, 65536)")
    parser.add_argument("--threads", type=int, default=1, help="numba threads (default 1)")
    parser.add_argument("--no-compile-times", action="store_true",
                        help="skip the cold-compile and warm-import measurements")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
