"""Search MGD loss weights and pseudo-label confidence thresholds per partition protocol.

    python experiments/tune_loss_weights.py              # the synthetic study on this machine
    python experiments/tune_loss_weights.py --smoke      # the smallest complete run
    python experiments/tune_loss_weights.py --dataset voc --data-root /data/VOC2012 \
        --protocols 1/16 1/8 1/4 1/2 --gpus-per-trial 1 --storage-path s3://bucket/mgd \
        --address auto

On VOC and Cityscapes every network starts from torchvision's ImageNet weights (--pretrained
imagenet, the paper's regime): the files are found in --pretrained-dir or torch hub's cache, or
downloaded, on this machine before Ray starts, and copied to STORAGE_PATH/pretrained/ for the
workers. The synthetic set trains from scratch (--pretrained none).
"""

import sys

from mgd_ray.cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
