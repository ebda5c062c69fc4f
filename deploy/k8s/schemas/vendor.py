"""Write KEDA's CRD schemas as JSON here, from a kedacore/keda checkout at a release tag:
each CRD's spec.versions[v1alpha1].schema.openAPIV3Schema, unchanged, after a `$comment` naming
its source (README.md). Rewrites the vendored files byte for byte from the same release.

    git clone --depth 1 --branch v2.20.2 https://github.com/kedacore/keda /tmp/keda
    python deploy/k8s/schemas/vendor.py /tmp/keda v2.20.2 "$(git -C /tmp/keda rev-parse HEAD)"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# vendored file: the CRD's plural (config/crd/bases/keda.sh_<plural>.yaml)
CRDS = {
    "keda-scaledobject.json": "scaledobjects",
    "keda-scaledjob.json": "scaledjobs",
    "keda-triggerauthentication.json": "triggerauthentications",
}


def schema(keda: Path, plural: str, version: str, commit: str) -> str:
    """The JSON text of one CRD's v1alpha1 schema, with its source in `$comment`."""
    source = f"config/crd/bases/keda.sh_{plural}.yaml"
    crd = yaml.safe_load((keda / source).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    comment = (
        f"openAPIV3Schema of {plural}.keda.sh (keda.sh/v1alpha1) from kedacore/keda {version} "
        f"(commit {commit}), {source}, converted to JSON unchanged otherwise"
    )
    return json.dumps({"$comment": comment, **served["schema"]["openAPIV3Schema"]}, indent=1)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit("usage: vendor.py KEDA_CHECKOUT VERSION COMMIT")
    keda, version, commit = Path(argv[0]), argv[1], argv[2]
    for name, plural in CRDS.items():
        (HERE / name).write_text(schema(keda, plural, version, commit) + "\n")
        print(f"{name}: {plural} from {version}")


if __name__ == "__main__":
    main(sys.argv[1:])
