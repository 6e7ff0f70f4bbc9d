"""Write multi-label manifests (several findings per image, as NIH ChestX-ray14's "Finding Labels"
lists them: 'even|round', or 'No Finding') over the real digit images of configs/data/digit_hospitals:
one manifest per hospital, listing that hospital's own files by a path relative to the manifest.

Each digit shows the findings its shape and value give it: `round` (a closed loop: 0 6 8 9),
`even` (0 2 4 6 8), `large` (5 and above); a 1 or a 3 shows none ("No Finding"). Patients are
kept where the hospital's export names them, so a split by patient still holds.

    python scripts/make_finding_manifests.py configs/data/digit_hospitals configs/data/digit_findings
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

FINDINGS = {"round": {0, 6, 8, 9}, "even": {0, 2, 4, 6, 8}, "large": {5, 6, 7, 8, 9}}


def findings(digit: int) -> str:
    found = [name for name, digits in sorted(FINDINGS.items()) if digit in digits]
    return "|".join(found) or "No Finding"


def main() -> None:
    from orchestrator.core.imaging.folders import list_samples
    from orchestrator.spec.data import DataSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("images", type=Path, help="a directory of hospital folders (make_image_hospitals.py)")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    for folder in sorted(p for p in args.images.iterdir() if p.is_dir()):
        samples = list_samples(folder, DataSpec.model_validate({"source": "images", "path": str(args.images)}))
        target = args.out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "findings.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Image Index", "Finding Labels", "Patient ID"])
            for i, (path, label) in enumerate(zip(samples.paths, samples.labels)):
                patient = samples.patients[i] if samples.patients else f"{folder.name}_{i:04d}"
                rel = os.path.relpath(path, target.resolve())
                w.writerow([rel, findings(int(label.removeprefix("digit_"))), patient])
        print(f"{target / 'findings.csv'}: {len(samples.paths)} images")


if __name__ == "__main__":
    main()
