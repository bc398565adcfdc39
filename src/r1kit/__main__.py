"""`python -m r1kit ...`: the `r1kit` command, also under torchrun.

    torchrun --nproc-per-node N -m r1kit sft --config sft.yaml

Under torchrun (its environment sets WORLD_SIZE) the process group is opened before the command runs and
closed after it (training/distributed.py `process_group`), so every rank runs the same command, and `record`
writes a failing rank's traceback where torchrun reports it. Without torchrun this is `r1kit` itself.
"""

import os
import sys

from r1kit.cli import main


def run() -> int:
    if "WORLD_SIZE" not in os.environ:
        return main()
    from torch.distributed.elastic.multiprocessing.errors import record

    from r1kit.training.distributed import process_group

    @record
    def ranked() -> int:
        with process_group():
            return main()

    return ranked()


if __name__ == "__main__":
    sys.exit(run())
