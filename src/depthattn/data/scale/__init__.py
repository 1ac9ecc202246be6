"""`prepare` on datatrove: the same shards and manifest, built by many tasks on one machine
(`LocalPipelineExecutor`) or on a Slurm cluster (`SlurmPipelineExecutor`). Needs the `scale`
extra (`pip install "depthattn[scale]"`). Entry point: `engine.prepare_with_datatrove`.

Stages, each a datatrove pipeline over N tasks or one:

1. signatures (N): read + clean -> [tokenizer sample] -> MinHash signatures (MinHash stage 1);
2. buckets (one task per MinHash bucket): duplicate pairs (MinHash stage 2);
3. clusters (1): the documents to drop (MinHash stage 3);
4. tokenizer (1, when none is given): the BPE on the tasks' samples;
5. shards (N): read + clean -> drop near copies (MinHash stage 4) -> split -> token shards;
6. manifest (1): the shards under their final names, then manifest.json.

Without near-duplicate removal stages 2-3 go, and stage 1 too when a tokenizer is given.
"""
