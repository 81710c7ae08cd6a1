"""Search MGD loss weights and pseudo-label confidence thresholds per partition protocol: the
documented path of `mgd-ray study`, with the same options (mgd_ray/cli.py; --help lists them).

    python experiments/tune_loss_weights.py              # the synthetic study on this machine
"""

import sys

from mgd_ray.cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
