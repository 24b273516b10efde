"""The glue program's exports, checked by the Python libraries that read them (run by ctest).

A short MRPC run on CPU with --do_predict (a test file made from dev rows), --export_peft and --export_merged;
then:
  * peft.AutoPeftModelForSequenceClassification.from_pretrained(export) offline gives the C++ logits;
  * transformers.AutoModelForSequenceClassification.from_pretrained(merged) gives them too;
  * the uniform-rank PEFT export (one r for every layer) gives them too;
  * glue --do_train False --init_from_peft export (C++ → PEFT → C++) predicts the same logits;
  * glue --init_from_peft export trains on, growing from the imported ranks.

usage: check_glue_exports.py --glue GLUE --model_dir MINILM --data_dir MRPC_DIR --workdir FOLDER
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch


def read_logits(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return torch.tensor([[float(v) for v in row[1:]] for row in rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--glue", required=True)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import peft
    import transformers

    shutil.rmtree(a.workdir, ignore_errors=True)
    data = os.path.join(a.workdir, "data")
    os.makedirs(data)
    shutil.copy(os.path.join(a.data_dir, "train.tsv"), data)
    shutil.copy(os.path.join(a.data_dir, "dev.tsv"), data)
    # A test file in GLUE's MRPC test layout (index, #1 ID, #2 ID, #1 String, #2 String) from dev rows.
    pairs = []
    with open(os.path.join(a.data_dir, "dev.tsv"), encoding="utf-8-sig") as f:
        next(f)
        for line in f:
            cols = line.rstrip("\n").split("\t")
            pairs.append((cols[3], cols[4]))
            if len(pairs) == 40:
                break
    with open(os.path.join(data, "test.tsv"), "w", encoding="utf-8") as f:
        f.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        for i, (s1, s2) in enumerate(pairs):
            f.write(f"{i}\t{i}\t{i}\t{s1}\t{s2}\n")

    run = os.path.join(a.workdir, "run")
    peft_dir, uniform_dir, merged_dir = (os.path.join(a.workdir, n) for n in ("peft", "peft-uniform", "merged"))
    common = [a.glue, "--task_name", "mrpc", "--data_dir", data, "--model_dir", a.model_dir, "--device", "cpu",
              "--max_seq_length", "64", "--max_eval_samples", "40", "--per_device_train_batch_size", "8",
              "--lora_module", "query,value,layer.output", "--lora_r", "1", "--target_rank", "2",
              "--init_warmup", "2", "--incre_interval", "2", "--top_h", "12", "--learning_rate", "5e-3",
              "--warmup_steps", "2", "--lora_dropout", "0", "--cls_dropout", "0", "--seed", "3", "--do_predict"]
    subprocess.run(common + ["--max_steps", "12", "--eval_steps", "6", "--root_output_dir", run,
                             "--export_peft", peft_dir, "--export_merged", merged_dir], check=True)
    subprocess.run(common + ["--max_steps", "12", "--eval_steps", "6", "--root_output_dir", run + "-u",
                             "--export_peft", uniform_dir, "--export_peft_uniform_rank", "True"], check=True)
    y_cpp = read_logits(os.path.join(run, "predictions", "MRPC.logits.tsv"))
    with open(os.path.join(run, "predictions", "MRPC.tsv")) as f:
        header = f.readline().rstrip("\n")
        predicted = [int(line.split("\t")[1]) for line in f]
    assert header == "index\tprediction", header
    assert predicted == y_cpp.argmax(1).tolist(), "MRPC.tsv does not hold the argmax of the logits"
    assert len(predicted) == 40

    tokenizer = transformers.AutoTokenizer.from_pretrained(a.model_dir)
    enc = tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation="longest_first", max_length=64,
                    padding=True, return_tensors="pt")

    def logits_of(model):
        model.eval()
        with torch.no_grad():
            return model(**enc).logits.float()

    base_effect = None
    for what, model in (
        ("PEFT export (AutoPeftModelForSequenceClassification)",
         peft.AutoPeftModelForSequenceClassification.from_pretrained(peft_dir)),
        ("merged export (AutoModelForSequenceClassification)",
         transformers.AutoModelForSequenceClassification.from_pretrained(merged_dir)),
    ):
        y = logits_of(model)
        diff = (y - y_cpp).abs().max().item()
        print(f"{what}: max |logit diff| vs C++ = {diff:.3e}")
        torch.testing.assert_close(y, y_cpp, atol=2e-4, rtol=0)
    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"], config
    ranks = set(config["rank_pattern"].values())
    assert len(ranks) > 1, f"the adapter should have layers of different ranks: {config['rank_pattern']}"

    y_uniform_cpp = read_logits(os.path.join(run + "-u", "predictions", "MRPC.logits.tsv"))
    uniform = peft.AutoPeftModelForSequenceClassification.from_pretrained(uniform_dir)
    rs = {m.r["default"] for m in uniform.modules() if hasattr(m, "r") and isinstance(m.r, dict) and m.r}
    assert len(rs) == 1, f"uniform export: PEFT built ranks {rs}"
    torch.testing.assert_close(logits_of(uniform), y_uniform_cpp, atol=2e-4, rtol=0)
    print(f"uniform-rank PEFT export: one rank {rs} for every layer, same logits")

    # C++ → PEFT → C++: the imported adapter (and head) predicts what the run's model predicted.
    subprocess.run(common + ["--do_train", "False", "--init_from_peft", peft_dir, "--root_output_dir", run + "-import"],
                   check=True)
    y_back = read_logits(os.path.join(run + "-import", "predictions", "MRPC.logits.tsv"))
    torch.testing.assert_close(y_back, y_cpp, atol=1e-5, rtol=0)
    print(f"glue --init_from_peft (C++ -> PEFT -> C++): max |logit diff| = {(y_back - y_cpp).abs().max().item():.3e}")
    # ... and training continues from the imported ranks to a larger budget.
    start_total = sum(config["rank_pattern"].values())
    grow = run + "-grow"
    subprocess.run(common + ["--init_from_peft", peft_dir, "--root_output_dir", grow, "--max_steps", "6",
                             "--eval_steps", "6", "--target_total_rank", str(start_total + 6), "--top_h", "6",
                             "--incre_rank_num", "1"], check=True)
    with open(os.path.join(grow, "metrics.json")) as f:
        total = json.load(f)["total_rank"]
    assert total == start_total + 6, f"grew to total rank {total}, expected {start_total + 6}"
    print(f"glue --init_from_peft then trains on: total rank {start_total} -> {total}")
    print("glue exports check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
