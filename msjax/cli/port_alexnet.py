"""bin/port_alexnet: torchvision's ImageNet AlexNet weights to an msjax params file, once.

    bin/port_alexnet --pth=alexnet-owt-7be5be79.pth --out=weights/alexnet_imagenet.npz

The .pth is torchvision's download for alexnet(weights="IMAGENET1K_V1"),
https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (read without torch).
Training does this itself on first use (`msjax.convert.download`).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from msjax.cli import common

flags.DEFINE_string("pth", None, "torchvision AlexNet checkpoint (.pth).", required=True)
flags.DEFINE_string("out", None, "Destination msjax params file (.npz).", required=True)
FLAGS = flags.FLAGS


def main() -> int:
    from msjax.convert.torchvision import port_pth

    params = port_pth(Path(FLAGS.pth), Path(FLAGS.out))
    count = sum(v.size for layer in params.values() for v in layer.values())
    print(f"wrote {FLAGS.out}: {len(params)} conv layers, {count:,} parameters")
    return 0


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
