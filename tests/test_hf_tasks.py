"""The Hugging Face tasks without a network: options, corpus split, federated state, FFA-LoRA, the PEFT round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedstream.client.device_copy import load_state, local_state
from fedstream.common.tasks import load_task
from fedstream.common.tasks.hf import byte_tokenizer as tok
from fedstream.common.tasks.hf.adapter_files import save_adapter
from fedstream.common.tasks.hf.stdlib_corpus import HELD_OUT, package_groups
from fedstream.common.tasks.hf.tiny_model import build_tiny_model

SMALL = {"max_length": "32", "group_blocks": "4", "eval_blocks": "8", "steps": "3", "batch_size": "4"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), pretrain_steps=2))


def lm_task(model_dir: str, **options: str):
    return load_task("hf-causal-lm", {**SMALL, "model": model_dir, **options})


def test_byte_tokenizer_round_trips_utf8_and_pads() -> None:
    text = "def f(x):\n    return 'é'"
    assert tok.decode(tok.encode(text)) == text
    rows = tok.padded([[1, 2, 3], list(range(10))], 5)
    assert rows.tolist() == [[1, 2, 3, tok.PAD, tok.PAD], [0, 1, 2, 3, 4]]
    assert tok.lm_labels(rows)[0].tolist() == [1, 2, 3, tok.IGNORE, tok.IGNORE]


def test_unknown_and_malformed_options_are_refused_with_the_known_list(model_dir: str) -> None:
    with pytest.raises(ValueError, match=r"lora_rank=4: unknown option for hf-causal-lm; known: model, data, lora_r"):
        lm_task(model_dir, lora_rank="4")
    with pytest.raises(ValueError, match=r"lora_r=-1: expected an integer >= 0"):
        lm_task(model_dir, lora_r="-1")
    with pytest.raises(ValueError, match=r"num_labels=3: unknown option for hf-causal-lm"):
        lm_task(model_dir, num_labels="3")
    with pytest.raises(ValueError, match=r"lora_variant=ffa needs adapters"):
        lm_task(model_dir, lora_r="0", lora_variant="ffa")


def test_missing_model_is_one_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model=no-such/model: not a directory, and not in the local Hugging Face cache"):
        load_task("hf-causal-lm", {"model": "no-such/model"})
    with pytest.raises(ValueError, match=r"has no config.json"):
        load_task("hf-causal-lm", {"model": str(tmp_path)})


def test_four_bit_base_weights_are_refused_on_cpu(model_dir: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this process sees a GPU")
    task = lm_task(model_dir, quantize="4bit")
    with pytest.raises(ValueError, match=r"quantize=4bit: bitsandbytes' 4-bit kernels run on CUDA GPUs"):
        task.make_model()


def test_stdlib_clients_get_whole_disjoint_packages_and_the_held_out_ones_nobody(model_dir: str) -> None:
    task = lm_task(model_dir)
    groups = package_groups()
    names = [g for g in groups if g not in HELD_OUT]
    assert task.groups.max().item() == len(names) - 1 and HELD_OUT[0] in groups
    splits = [task.client_split(i, 3) for i in range(3)]
    x = task.train_data.tensors[0]
    for i, split in enumerate(splits):  # client i: packages i, i+3, ...; each 10th of its rows held out for itself
        mine = x[task.groups % 3 == i]
        held = torch.arange(len(mine)) % 10 == 9
        assert len(split.personal_test) > 0
        assert torch.equal(split.train.tensors[0], mine[~held]) and torch.equal(split.personal_test.tensors[0], mine[held])
    test_rows = {tuple(r) for r in task.test_data.tensors[0].tolist()}
    assert not test_rows & {tuple(r) for r in x.tolist()}  # held-out packages: text no client trains on
    again = task.client_split(1, 3)
    assert torch.equal(again.train.tensors[0], splits[1].train.tensors[0])
    with pytest.raises(ValueError, match="deals whole packages"):
        task.client_split(0, 3, scheme="dirichlet")


def test_only_adapters_travel_and_every_party_builds_the_same_start(model_dir: str) -> None:
    task = lm_task(model_dir)
    a, b = task.make_model(), task.make_model()
    state = task.federated_state(a)
    assert state and all(".lora_A." in n or ".lora_B." in n for n in state)
    assert sum(v.numel() for v in state.values()) < sum(v.numel() for v in a.state_dict().values()) / 10
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_load_federated_state_copies_checks_and_ignores_the_frozen_base(model_dir: str) -> None:
    task = lm_task(model_dir)
    model = task.make_model()
    new = {n: torch.randn_like(v) for n, v in task.federated_state(model).items()}
    full = {**{n: v.clone() for n, v in model.state_dict().items()}, **new}  # today's server sends everything
    load_state(model, full, task)
    for name, value in task.federated_state(model).items():
        assert torch.equal(value, new[name]) and value.data_ptr() != new[name].data_ptr()
    first = next(iter(new))
    with pytest.raises(ValueError, match=r"lacks 1 federated tensor"):
        task.load_federated_state(model, {n: v for n, v in new.items() if n != first})
    with pytest.raises(ValueError, match=rf"tensor {first} arrived with shape"):
        task.load_federated_state(model, {**new, first: torch.zeros(3)})
    with pytest.raises(ValueError, match=r"names 1 unknown"):
        task.load_federated_state(model, {**new, "evil.weight": torch.zeros(1)})
    local = local_state(task, model, full)
    assert all(local[n] is full[n] for n in full if n not in new)  # frozen tensors: zero delta


def test_training_moves_only_the_adapters_and_reports_perplexity(model_dir: str) -> None:
    task = lm_task(model_dir)
    model = task.make_model()
    frozen = {n: v.clone() for n, v in model.state_dict().items() if n not in task.federated_state(model)}
    before = {n: v.clone() for n, v in task.federated_state(model).items()}
    split = task.client_split(0, 2)
    metrics = task.train(model, split.train, task.defaults, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert metrics["steps"] == 3 and metrics["train_loss"] > 0
    assert any(not torch.equal(v, before[n]) for n, v in task.federated_state(model).items())
    assert all(torch.equal(model.state_dict()[n], v) for n, v in frozen.items())
    scores = task.evaluate(model, task.test_data, torch.device("cpu"))
    assert scores["perplexity"] == pytest.approx(torch.tensor(scores["loss"]).exp().item(), rel=1e-6)
    assert 0 <= scores["accuracy"] <= 1


def test_ffa_lora_freezes_a_at_the_shared_start_so_only_b_travels(model_dir: str) -> None:
    task = lm_task(model_dir, lora_variant="ffa")
    model = task.make_model()
    names = list(task.federated_state(model))
    assert names and all(".lora_B." in n for n in names)
    a_before = {n: v.clone() for n, v in model.state_dict().items() if ".lora_A." in n}
    task.train(model, task.client_split(0, 2).train, task.defaults, torch.device("cpu"), torch.Generator().manual_seed(0))
    other = task.make_model()
    for name, value in a_before.items():
        assert torch.equal(model.state_dict()[name], value) and torch.equal(other.state_dict()[name], value)


def test_full_fine_tuning_and_local_modules(model_dir: str) -> None:
    full = lm_task(model_dir, lora_r="0")
    model = full.make_model()
    assert set(full.federated_state(model)) == {n for n, _ in model.named_parameters()}
    assert full.unsupported == {}
    personal = lm_task(model_dir, local_modules="lm_head")
    model = personal.make_model()
    assert not any("lm_head" in n for n in personal.federated_state(model))
    assert all(p.requires_grad for n, p in model.named_parameters() if "lm_head" in n)
    assert "pruning" in personal.unsupported
    with pytest.raises(ValueError, match=r"local_modules=nope: no module of the model is named so"):
        lm_task(model_dir, local_modules="nope").make_model()


def test_global_adapter_loads_with_peft_from_pretrained(model_dir: str, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    task = lm_task(model_dir)
    model = task.make_model()
    state = {n: torch.randn_like(v) * 0.1 for n, v in task.federated_state(model).items()}
    written = save_adapter(task, task.make_model(), state, tmp_path / "adapter")
    assert [p.name for p in written] == ["adapter_model.safetensors", "adapter_config.json"]
    assert all(p.is_file() for p in written)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 8
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "adapter")
    task.load_federated_state(model, state)
    x = task.test_data.tensors[0][:2]
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, loaded(input_ids=x).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=x).logits
    assert not torch.allclose(base, loaded(input_ids=x).logits, atol=1e-3)  # the adapter did change the model


def test_sequence_classification_on_stdlib_and_on_labelled_jsonl(model_dir: str, tmp_path: Path) -> None:
    task = load_task("hf-sequence-classification", {**SMALL, "model": model_dir})
    model = task.make_model()
    names = list(task.federated_state(model))
    assert any("score" in n for n in names) and any("lora_" in n for n in names)
    assert set(task.train_data.tensors[1].tolist()) == {0, 1}
    metrics = task.train(model, task.client_split(0, 2).train, task.defaults, torch.device("cpu"),
                         torch.Generator().manual_seed(0))
    assert metrics["steps"] == 3
    assert set(task.evaluate(model, task.test_data, torch.device("cpu"))) == {"loss", "accuracy"}
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"example {i}", "label": i % 3}) for i in range(30)))
    task = load_task("hf-sequence-classification", {"model": model_dir, "data": str(data), "num_labels": "3"})
    assert len(task.train_data) == 27 and len(task.test_data) == 3
    data.write_text(json.dumps({"text": "x", "label": 5}))
    with pytest.raises(ValueError, match=r"example 1: label 5; expected an integer in \[0, 3\)"):
        load_task("hf-sequence-classification", {"model": model_dir, "data": str(data), "num_labels": "3"})


def test_gradient_checkpointing_trains_the_same_steps(model_dir: str) -> None:
    plain, checkpointed = lm_task(model_dir), lm_task(model_dir, gradient_checkpointing="1")
    results = []
    for task in (plain, checkpointed):
        model = task.make_model()
        task.train(model, task.client_split(0, 2).train, task.defaults, torch.device("cpu"),
                   torch.Generator().manual_seed(0))
        results.append(task.federated_state(model))
    model = checkpointed.make_model()
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    for name, value in results[0].items():
        assert torch.allclose(value, results[1][name], atol=1e-5), name


def test_dp_sgd_trains_the_adapters_and_leaves_the_base_alone(model_dir: str) -> None:
    from fedstream.client.dp_sgd import DpSgdSettings, DpSgdTrainer, check_model

    task = lm_task(model_dir)
    model = task.make_model()
    check_model(model)
    federated = task.federated_state(model)
    before = {n: v.clone() for n, v in model.state_dict().items()}
    metrics = DpSgdTrainer(DpSgdSettings(1.0)).train(task, model, task.client_split(0, 2).train, task.defaults,
                                                     torch.device("cpu"))
    assert metrics["steps"] == 3 and metrics["dp_sgd_epsilon"] > 0
    after = model.state_dict()
    assert any(not torch.equal(after[n], before[n]) for n in federated)
    assert all(torch.equal(after[n], v) for n, v in before.items() if n not in federated)


def test_a_client_scores_its_personalised_model_on_its_own_held_out_text(model_dir: str) -> None:
    from fedstream.client.runner import ClientConfig, FederatedClient

    task = lm_task(model_dir, local_modules="lm_head")
    client = FederatedClient(task, ClientConfig(server="127.0.0.1:9", client_id="c1", partition=(1, 2), device="cpu"))
    try:
        assert len(client.personal_test) and len(client.data) == len(task.client_split(1, 2).train)
        metrics = client._personal_eval("personal_")
    finally:
        client.channel.close()
    assert set(metrics) == {"personal_eval_loss", "personal_eval_accuracy", "personal_eval_perplexity"}
    assert metrics["personal_eval_perplexity"] == pytest.approx(torch.tensor(metrics["personal_eval_loss"]).exp().item())


def test_a_tokenizer_trained_locally_and_saved_beside_the_model_is_used(model_dir: str, tmp_path: Path) -> None:
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    own = tmp_path / "model"
    shutil.copytree(model_dir, own)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = [Path(__file__).read_text()] * 3
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<unk>"]))
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", unk_token="<unk>").save_pretrained(own)
    task = lm_task(str(own), tokenizer="model")
    ids = task.train_data.tensors[0]
    assert ids.max() < 200 and not torch.equal(ids, lm_task(model_dir).train_data.tensors[0][: len(ids)])
    assert task.make_model().config.pad_token_id == 0
    with pytest.raises(ValueError, match=r"tokenizer=model: no tokenizer could be loaded"):
        lm_task(model_dir, tokenizer="model")
