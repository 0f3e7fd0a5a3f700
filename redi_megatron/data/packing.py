"""Padding-free micro-batches: whole samples packed into rows of a token budget.

Each sample contributes one document per completion (prompt + completion: one for SFT, prompt +
chosen and prompt + rejected for pairs), and all of a sample's documents go into the same row.
Rows are filled first-fit decreasing, a deterministic function of the micro-batch's samples, so a
run resumed mid-epoch rebuilds the identical rows. Per position the micro-batch carries:

- ``position_ids``: restarting at 0 for each document (and for the padding at the end of a row,
  which the model treats as one more document that nothing reads);
- ``sequence_ids``: the index of the sequence whose label sits at that position, in sample order
  (pairs: chosen 2i, rejected 2i+1), -1 where there is none (a document's last position, padding),
  so the objectives sum log-probs per sequence exactly as over padded rows.
"""

from typing import List, Sequence, Tuple

import numpy as np
import torch

Document = Tuple[np.ndarray, np.ndarray]  # (prompt ids, completion ids)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> List[List[int]]:
    """Returns rows of item indices (ascending within a row) whose lengths sum to at most capacity.

    Items are placed longest first (ties by index), each into the first row with room for it.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: List[List[int]] = []
    free: List[int] = []
    for item in order:
        if lengths[item] > capacity:
            raise ValueError(f"item {item} of length {lengths[item]} exceeds the row capacity {capacity}")
        for row, space in enumerate(free):
            if lengths[item] <= space:
                rows[row].append(item)
                free[row] -= lengths[item]
                break
        else:
            rows.append([item])
            free.append(capacity - lengths[item])
    return [sorted(row) for row in rows]


def packed_micro_batch(samples: List[List[Document]], pack_tokens: int, pad_id: int) -> dict:
    """Returns the packed tensors [rows, pack_tokens] of a micro-batch's samples, plus num_sequences.

    ``samples[i]`` lists sample i's documents; sequence k of sample i has index i * k_per_sample + k.
    """
    per_sample = len(samples[0])
    sizes = [sum(len(p) + len(c) for p, c in documents) for documents in samples]
    rows = first_fit_decreasing(sizes, pack_tokens)
    shape = (len(rows), pack_tokens)
    tokens = np.full(shape, pad_id, np.int64)
    labels = np.full(shape, pad_id, np.int64)
    loss_mask = np.zeros(shape, np.float32)
    position_ids = np.zeros(shape, np.int64)
    sequence_ids = np.full(shape, -1, np.int64)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            for k, (prompt, completion) in enumerate(samples[i]):
                end = start + len(prompt) + len(completion)
                tokens[r, start:start + len(prompt)] = prompt
                tokens[r, start + len(prompt):end] = completion
                labels[r, start:end - 1] = tokens[r, start + 1:end]
                # Position t predicts token t + 1: the completion is predicted from the last prompt position.
                loss_mask[r, start + len(prompt) - 1:end - 1] = 1.0
                position_ids[r, start:end] = np.arange(end - start)
                sequence_ids[r, start:end - 1] = i * per_sample + k
                start = end
        position_ids[r, start:] = np.arange(pack_tokens - start)
    return {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "position_ids": torch.from_numpy(position_ids),
        "sequence_ids": torch.from_numpy(sequence_ids),
        "num_sequences": torch.tensor(len(samples) * per_sample, dtype=torch.int64),
    }
