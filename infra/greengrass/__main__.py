"""Write the edge container's Greengrass v2 component recipe for one image and component version.

    python -m infra.greengrass --image-uri 123456789012.dkr.ecr.eu-west-1.amazonaws.com/edge-inference:1.4.0 \\
        --version 1.4.0 --secret-arn arn:aws:secretsmanager:eu-west-1:123456789012:secret:edge-api-key-AbCdEf \\
        --launcher-uri s3://my-artifacts/com.example.EdgeInference/1.4.0/launch_edge.py --out recipe.json

Every --cloud-url ... --reload-poll-s option is only the component's default configuration: a deployment
can override each one (configuration merge) without a new component version. Exit codes: 0 written,
2 a bad option (one line naming it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.greengrass.recipe import (
    ARCHITECTURES,
    DEFAULT_COMPONENT_NAME,
    LAUNCHER_FILE,
    RecipeError,
    RecipeOptions,
    build_recipe,
)

PROG = "python -m infra.greengrass"


def _parser() -> argparse.ArgumentParser:
    d = RecipeOptions("", "", "", "")
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-uri", required=True, help="the edge image in ECR, with a tag or @sha256: digest")
    p.add_argument("--version", required=True, help="the component version (semantic: 1.4.0)")
    p.add_argument("--secret-arn", required=True, help="Secrets Manager secret holding the cloud API key")
    p.add_argument("--launcher-uri", required=True,
                   help=f"s3:// URI where infra/greengrass/{LAUNCHER_FILE} is uploaded for this version")
    p.add_argument("--out", type=Path, required=True, help="where to write the recipe (JSON); '-' for stdout")
    p.add_argument("--component-name", default=DEFAULT_COMPONENT_NAME)
    p.add_argument("--publisher", default=d.publisher)
    p.add_argument("--cloud-url", default=d.cloud_url, help="the cloud API's base URL (ApiUrl); empty: edge only")
    p.add_argument("--model-dir", default=d.model_dir, help="the device's artifact folder (mounted read-only)")
    p.add_argument("--s3-latest-uri", default=d.s3_latest_uri, help="s3://.../latest.json to poll for new models")
    p.add_argument("--listen-address", default=d.listen_address, help="EDGE_HOST on the device (host network)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--policy", default=d.policy)
    p.add_argument("--log-level", default=d.log_level)
    p.add_argument("--reload-poll-s", type=float, default=d.reload_poll_s)
    p.add_argument("--container-name", default=d.container_name)
    p.add_argument("--architectures", default=",".join(ARCHITECTURES),
                   help=f"Greengrass platform architectures, comma-separated (default {','.join(ARCHITECTURES)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = RecipeOptions(
        image_uri=args.image_uri, version=args.version, launcher_uri=args.launcher_uri, secret_arn=args.secret_arn,
        component_name=args.component_name, publisher=args.publisher, cloud_url=args.cloud_url,
        model_dir=args.model_dir, s3_latest_uri=args.s3_latest_uri, listen_address=args.listen_address,
        port=args.port, policy=args.policy, log_level=args.log_level, reload_poll_s=args.reload_poll_s,
        container_name=args.container_name,
        architectures=tuple(a.strip() for a in args.architectures.split(",") if a.strip()))
    try:
        recipe = build_recipe(options)
    except RecipeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(recipe, indent=2) + "\n"
    if str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}: {options.component_name} {options.version} ({options.image}); next:\n"
              f"  aws s3 cp infra/greengrass/{LAUNCHER_FILE} {options.launcher_uri}\n"
              f"  aws greengrassv2 create-component-version --inline-recipe fileb://{args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
