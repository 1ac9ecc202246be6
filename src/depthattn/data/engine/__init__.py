"""The prepare engine for local corpora: datatrove pipelines over N tasks, on one machine
(`LocalPipelineExecutor`) or on a Slurm cluster (`SlurmPipelineExecutor`), writing the shards and
manifest training reads. Entry point: `prepare_text.prepare`, which checks the arguments and
calls `run.run_datatrove`.

Stages, each a datatrove pipeline over N tasks or one:

1. signatures (N): read + clean -> ledger -> [tokenizer sample] -> MinHash signatures
   (MinHash stage 1);
2. buckets (one task per MinHash band): duplicate pairs (MinHash stage 2);
3. clusters (1): the documents to drop (MinHash stage 3);
4. tokenizer (1, when none is given): the BPE on the tasks' samples;
5. shards (N): read + clean -> ledger check -> drop copies (MinHash stage 4) -> split -> token
   shards;
6. manifest (1): the shards under their final names, then manifest.json.

Without near-duplicate removal, datatrove's exact-dedup stages take the place of 1-3 (stage 1
writes hashes of the texts, one task finds the copies) and of the filter in 5: exact copies
are dropped either way.
"""
