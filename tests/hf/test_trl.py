"""TRL's ``SFTTrainer`` fine-tunes a depthattn folder, as a new user would: padded batches, and
padding-free packed rows (``padding_free=True``: several documents in one row, position_ids
restarting at 0, no attention mask). TRL reads ``model.base_model(..., use_cache=False)
.last_hidden_state`` and passes flash attention's ``cu_seq_lens_*`` keywords."""

from __future__ import annotations

import pytest
import torch

from depthattn import CausalLM
from depthattn.data.tokenizer import train_bpe
from depthattn.hf import DepthAttnForCausalLM
from tests.conftest import make_text, tiny_config

trl = pytest.importorskip("trl", reason="TRL is in the test extra")
datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def texts_and_tokenizer():
    texts = [make_text(i, 60) for i in range(16)]
    return texts, train_bpe(texts, vocab_size=300)


def finetune(folder, texts, tokenizer, padding_free: bool):
    """Three SFT steps of batch 4 (max_length 64); returns the trainer and the keywords of
    every call of the base model."""
    model = DepthAttnForCausalLM.from_pretrained(folder)
    calls = []
    model.model.register_forward_pre_hook(lambda _, args, kwargs: calls.append(kwargs),
                                          with_kwargs=True)
    config = trl.SFTConfig(output_dir=str(folder / "run"), max_steps=3,
                           per_device_train_batch_size=4, max_length=64, learning_rate=1e-3,
                           padding_free=padding_free, packing=padding_free, report_to=[],
                           save_strategy="no", logging_steps=1, use_cpu=True, seed=0,
                           dataloader_num_workers=0, disable_tqdm=True)
    trainer = trl.SFTTrainer(model=model, args=config,
                             train_dataset=datasets.Dataset.from_dict({"text": texts}),
                             processing_class=tokenizer)
    trainer.train()
    return trainer, calls


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
@pytest.mark.parametrize("method", ["vanilla", "depth_attention"])
def test_sft_trainer_trains_a_depthattn_folder(tmp_path, texts_and_tokenizer, method,
                                               padding_free):
    texts, tokenizer = texts_and_tokenizer
    torch.manual_seed(0)
    core = CausalLM(tiny_config(method=method, vocab_size=len(tokenizer)))
    DepthAttnForCausalLM.from_core(core, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    before = {n: p.clone() for n, p in core.named_parameters()}

    trainer, calls = finetune(tmp_path, texts, tokenizer, padding_free)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)  # every parameter trained
    assert calls and all(call.get("use_cache") is False for call in calls)

    if not padding_free:
        assert calls[0]["attention_mask"] is not None
        return
    # TRL packed several documents per row: each one's logits are those it gets alone
    batch = calls[0]
    positions = batch["position_ids"]
    assert "attention_mask" not in batch and "cu_seq_lens_q" in batch
    starts = (positions[0] == 0).nonzero().flatten().tolist() + [positions.shape[1]]
    assert len(starts) > 2  # at least two documents in the row
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(batch["input_ids"][:, a:b], use_cache=False).logits
                           for a, b in zip(starts, starts[1:])], 1)
    torch.testing.assert_close(packed, alone, rtol=0, atol=5e-5)
