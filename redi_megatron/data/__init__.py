"""REDI data pipeline: answer checking, teacher-data selection, tokenised shards and micro-batch loading.

Import the submodules directly (e.g. ``redi_megatron.data.micro_batches``); this package imports nothing
heavy on its own.
"""
