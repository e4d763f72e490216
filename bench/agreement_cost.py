"""What measuring task agreement adds to a profile: `splitinfer profile`'s default settings,
without and with the agreement of every (cut, codec) on the evaluation samples, in one run.

Both are timed by the wall clock on all of this machine's cores (the agreement measurement runs
samples side by side on every core; the timing profile pins its own threads). The target: the
profile with agreement on 64 samples and every lossy codec takes ≤ 3× the profile without.

    .venv/bin/python bench/agreement_cost.py [--model mobilenet_v2] [--samples 64]
"""

from __future__ import annotations

import argparse
import os
import time

from splitter.accuracy.evaluate import Evaluation
from splitter.accuracy.samples import default_samples
from splitter.metrics import create_metric
from splitter.pipeline import model_cuts, profile_source, with_agreement
from splitter.profile.timing import ProfileSettings
from splitter.sources import load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    source = load_source(args.model)
    evaluation = Evaluation(default_samples(source, args.samples), create_metric(source.metric or "top1"))
    start = time.perf_counter()
    profile = profile_source(source, ProfileSettings())
    profile_s = time.perf_counter() - start
    start = time.perf_counter()
    measured = with_agreement(profile, source, model_cuts(source, include_input=True), evaluation)
    agreement_s = time.perf_counter() - start
    lossy = sorted(
        {c for cut in measured.cuts for c, cost in cut.codecs.items() if cost.agreement is not None and "fp32" not in c}
    )
    print(
        f"{args.model}: {len(profile.cuts)} cuts, {os.cpu_count()} cores; samples: {evaluation.samples.evaluation.description}"
    )
    print(
        f"lossy codecs measured ({len(lossy)}, {len({c.split('+')[0] for c in lossy})} distinct encodings): {', '.join(lossy)}"
    )
    print(f"profile without agreement: {profile_s:.1f} s; agreement: {agreement_s:.1f} s")
    print(f"profile with agreement ÷ without: {(profile_s + agreement_s) / profile_s:.2f} (target ≤ 3)")


if __name__ == "__main__":
    main()
