"""Launched with N processes: which training samples each process gets at each step of two epochs (JSON per rank).

usage: data_shards.py DATASET PER_DEVICE_BATCH_SIZE OUT_DIR
"""

import json
import sys
from pathlib import Path

from accelerate.utils import set_seed

from hf_vit.training.arguments import PretrainingArguments
from hf_vit.training.augmentation import build_transforms
from hf_vit.training.data import ImageSamples, load_image_data
from hf_vit.training.pretraining import build_accelerator, data_loader

dataset, batch_size, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
args = PretrainingArguments(dataset=dataset, per_device_batch_size=batch_size, image_size=16, output_dir=str(out))
accelerator = build_accelerator(args)
set_seed(args.seed)  # as pretrain() does before it builds the loaders
data = load_image_data(args)
serve = ImageSamples.__getitem__
ImageSamples.__getitem__ = lambda self, index: (serve(self, index)[0], index)  # the label says which sample
loader = data_loader(data.train, data, build_transforms(args, (16, 16), True), batch_size, True, args)
loader = accelerator.prepare(loader)
steps = []
for epoch in range(2):
    loader.set_epoch(epoch)
    steps += [batch["labels"].tolist() for batch in loader]
record = {"rank": accelerator.process_index, "world_size": accelerator.num_processes, "steps": steps}
(out / f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
