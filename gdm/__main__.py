import os

from gdm.cli import main

if "TORCHELASTIC_RUN_ID" in os.environ:  # under torchrun: an uncaught error becomes the job's reported root cause
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)

main()
