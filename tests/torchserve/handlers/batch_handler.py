"""A function entry point (batch_handler.py:handle) that says how many requests each
call got: TorchServe batches with the archive's batchSize and maxBatchDelay."""

import time


def handle(data, context):
    if data is None:  # initialize
        return None
    time.sleep(0.05)  # a model that costs the same per call, whatever the batch
    return [{"echo": row.get("body"), "batch": len(data),
             "batch_size": context.system_properties["batch_size"]} for row in data]
