"""Fuzz the shared protocol core (framing, commands, the two-slot flash store with power cuts
over the host NOR emulator) and the bridge firmware's own commands with libFuzzer (host build,
AddressSanitizer + UndefinedBehaviorSanitizer) and print one JSON object.

    python bench/fuzz/fuzz_bridge.py [--harness bridge|cf-link] [--seconds 600] [--seed 1]
                                     [--corpus DIR] [--artifacts DIR]

The harness (firmware_bridge/firmware/host/fuzz_bridge.c) also aborts when an encoded frame
does not decode to itself, a request does not get exactly one valid reply, or the running
model is not a whole activated slot (after boot, after the input, after a power cut and reboot). Seeds: full upload sessions of real exports (int8 and f32 of a small
146-16-4 actor) plus raw wire captures. Crashes and hangs (inputs running > 10 s) leave
crash-*/timeout-* files in the artifacts directory; the JSON reports them.

--harness cf-link fuzzes the Crazyflie app's link instead (firmware_bridge/crazyflie/sitl/
fuzz_cf_link.c): the real nanofly_cf_link.c over the shared core, built against the firmware's
app_channel.h ($CRAZYFLIE_BASE), fed app-channel packets of fuzzed sizes and deck-UART bytes,
with arming and motor changes, controller hand-overs, power cuts and reboots. It aborts on a
reply packet over 30 bytes, a request without exactly one valid reply, a flash write while
armed or flying, and a running model whose flash bytes fail its CRC.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from fuzzing import build_cf_link_fuzzer, run_fuzzer, write_cf_link_seed_corpus, write_seed_corpus

from nanofly.firmware_bridge import protocol as P
from nanofly.firmware_bridge.crazyflie_tree import TreeError, TreeNotFound
from nanofly.firmware_bridge.firmware import build_fuzzer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the tests' helpers
from helpers import bridge as T  # noqa: E402

HARNESSES = {  # name: (build, seed corpus, max input bytes, harness source)
    "bridge": (build_fuzzer, write_seed_corpus, 16384, "firmware_bridge/firmware/host/fuzz_bridge.c"),
    "cf-link": (build_cf_link_fuzzer, write_cf_link_seed_corpus, 32768,
                "firmware_bridge/crazyflie/sitl/fuzz_cf_link.c"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harness", choices=sorted(HARNESSES), default="bridge",
                    help="bridge: the shared core + the bridge firmware; cf-link: the Crazyflie app's link")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", default=None, help="corpus directory (default: a temporary one)")
    ap.add_argument("--artifacts", default=None, help="where crash/timeout inputs go (default: temporary)")
    ap.add_argument("--log", default=None, help="write libFuzzer's log here")
    args = ap.parse_args()
    build, write_seeds, max_len, harness = HARNESSES[args.harness]
    with tempfile.TemporaryDirectory(prefix="nanofly-fuzz-") as tmp:
        tmp = Path(tmp)
        try:
            binary = build(tmp / "build")
        except (TreeNotFound, TreeError) as exc:
            print(f"error: --harness cf-link needs the Crazyflie firmware's headers: {exc}", file=sys.stderr)
            return 2
        export_dir = T.export(T.random_policy(tmp / "small.pt", layer_sizes=(146, 16, 4), seed=args.seed),
                              tmp / "export", seed=0, n_calibration=512)
        blobs = {P.FORMAT_INT8: (export_dir / "policy_int8.bin").read_bytes(),
                 P.FORMAT_F32: (export_dir / "policy_f32.bin").read_bytes()}
        corpus = Path(args.corpus) if args.corpus else tmp / "corpus"
        n_seeds = write_seeds(corpus, blobs)
        artifacts = Path(args.artifacts) if args.artifacts else tmp / "artifacts"
        result = run_fuzzer(binary, corpus, seconds=args.seconds, artifacts_dir=artifacts,
                            seed=args.seed, max_len=max_len, log_path=args.log)
        result.update({"seed_inputs": n_seeds, "corpus_dir": str(corpus),
                       "corpus_size": len(list(corpus.iterdir())), "artifacts_dir": str(artifacts),
                       "harness": harness,
                       "sanitizers": "address,undefined"})
        if args.artifacts is None and result["artifacts"]:
            keep = Path(tempfile.mkdtemp(prefix="nanofly-fuzz-artifacts-"))
            for name in result["artifacts"]:
                (keep / name).write_bytes((artifacts / name).read_bytes())
            result["artifacts_dir"] = str(keep)
        print(json.dumps(result))
        return 0 if result["crashes"] == 0 and result["hangs"] == 0 and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
