"""Accuracy against the field's baseline, on the store's own split (make bench-quality).

For 20 Newsgroups (GloVe 50d, headers stripped, max_len 1000) and AG News (the 7,600-row file,
GloVe 50d, max_len 200, truncating post), both built with the lexical channel:
- scikit-learn's TF-IDF (sublinear tf, unigrams and bigrams, min_df=2) with LinearSVC(C=0.5)
  and LogisticRegression(C=10), fitted on the store's train split, scored on its test split
  (the texts read by embcache's own corpus reader, joined to the store's split by doc id), and
  LinearSVC with its C chosen on the validation split;
- embcache's models, each over ``--seeds`` seeds with the defaults a user gets (10 epochs, early
  stopping on val accuracy, patience 3): ``tfidf`` and ``nb`` (the lexical models), the dense models named
  by ``--models``, and each of those with ``wide=true`` (trained as one group with it), on the
  GloVe store; the dense models also on the other representations' stores (``--reps``:
  WordLlama, MiniLM), built from the same corpus with the same split, plain and wide (the
  lexical channel there is the tokenizer's ids), and ``tfidf`` over those ids alone (so each
  wide model stands beside both its parts on its own store);
- per seed, ensembles of those runs across representations through the ``Scorer`` (store
  input joined by doc id): the default ``weighted`` mean and ``fit`` (fitted on the val split).

Prints a table per corpus (test accuracy: mean and range over seeds; training seconds) and
writes bench-out/quality/quality.json and quality.png (accuracy against training time).
scikit-learn is a benchmark-only dependency (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

CORPORA = {
    "news20": dict(corpus="news20.tar.gz", max_len=1000, truncating="pre", strip_headers=True),
    "ag_news": dict(corpus="ag_news_csv/test.csv", max_len=200, truncating="post",
                    strip_headers=False),
}


def build_store(name: str, data: Path, out: Path, reuse: bool, rep: str = "glove") -> str:
    """The corpus's store in representation ``rep`` (glove, wordllama or minilm), with the
    lexical channel and the same split."""
    import embcache
    from embcache.cache.store import store_state

    c = CORPORA[name]
    url = str(out / (f"{name}.zarr" if rep == "glove" else f"{name}-{rep}.zarr"))
    if reuse and store_state(url) == "complete" and embcache.open_store(url).meta.has_token_ids:
        return url
    if name == "ag_news":
        spec = embcache.CorpusSpec(str(data / c["corpus"]), text_columns=("1", "2"),
                                   label_column="0", header=False,
                                   label_names_file=str(data / "ag_news_csv" / "classes.txt"))
    else:
        spec = embcache.CorpusSpec(str(data / c["corpus"]), strip_headers=True)
    t = time.perf_counter()
    if rep == "glove":
        embcache.embed_corpus(spec, str(data / "glove.6B.50d.txt.gz"), url, overwrite=True,
                              settings=embcache.EmbedSettings(max_len=c["max_len"],
                                                              truncating=c["truncating"]))
    elif rep == "wordllama":
        w = data / "wordllama-l2-supercat-256"
        embcache.embed_corpus(spec, str(w / "l2_supercat_256.safetensors"), url, overwrite=True,
                              tokenizer=str(w / "l2_supercat_tokenizer_config.json"),
                              settings=embcache.EmbedSettings(max_len=c["max_len"],
                                                              truncating=c["truncating"]))
    else:
        embcache.embed_corpus(spec, None, url, encoder=str(data / "all-MiniLM-L6-v2.zip"),
                              overwrite=True, workers=1)
    print(f"  {rep} store {url}: {time.perf_counter() - t:.0f} s", flush=True)
    return url


def texts_by_split(name: str, data: Path, url: str) -> dict[str, tuple[list[str], list[str]]]:
    """The corpus's texts and labels per split of the store (joined by doc id)."""
    import embcache
    from embcache.cache.corpus import iter_documents, strip_usenet_header
    from embcache.cache.meta import SPLIT_NAMES

    store = embcache.open_store(url)
    ids = store.read("doc_ids")
    split = store.read("split")
    where = {str(d): SPLIT_NAMES[int(s)] for d, s in zip(ids, split)}
    spec = embcache.CorpusSpec.from_dict(store.meta.corpus)
    out: dict[str, tuple[list[str], list[str]]] = {s: ([], []) for s in SPLIT_NAMES}
    for doc in iter_documents(spec):
        text = strip_usenet_header(doc.text) if spec.strip_headers else doc.text
        texts, labels = out[where[doc.doc_id]]
        texts.append(text)
        labels.append(str(doc.label))
    return out


def sklearn_baselines(splits) -> dict[str, dict]:
    """The issue's fixed baselines, and LinearSVC with its ``C`` chosen on the validation split
    (embcache's models choose their epoch there: the fair comparison lets the baseline choose
    too; LR's sweep takes minutes per ``C`` on 20 Newsgroups, so it is LinearSVC's)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    (xtr, ytr), (xva, yva), (xte, yte) = splits["train"], splits["val"], splits["test"]
    t = time.perf_counter()  # one vectorizer for every baseline; its time is in each one's seconds
    vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=2)
    x_train, x_val, x_test = vec.fit_transform(xtr), vec.transform(xva), vec.transform(xte)
    vectorize = time.perf_counter() - t

    def fitted(model) -> tuple[object, float]:
        """The model fitted on the train split, and the fit's seconds."""
        t = time.perf_counter()
        return model.fit(x_train, ytr), time.perf_counter() - t

    def accuracy(model, x, y) -> float:
        return float((model.predict(x) == y).mean())

    out = {}
    for label, model in (("TF-IDF + LinearSVC (scikit-learn)", LinearSVC(C=0.5)),
                         ("TF-IDF + LR (scikit-learn)", LogisticRegression(C=10, max_iter=1000))):
        model, seconds = fitted(model)
        seconds += vectorize
        acc = accuracy(model, x_test, yte)
        out[label] = {"test": [acc], "seconds": [seconds]}
        print(f"  {label}: test {acc:.4f} ({seconds:.1f} s)", flush=True)
    sweep = [(c, *fitted(LinearSVC(C=c))) for c in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)]
    vals = [accuracy(model, x_val, yva) for _, model, _ in sweep]
    best = vals.index(max(vals))  # the first best on ties
    (c, model, _), val = sweep[best], vals[best]
    seconds = vectorize + sum(fit for _, _, fit in sweep)
    acc = accuracy(model, x_test, yte)
    label = f"TF-IDF + LinearSVC, C={c:g} chosen on val (scikit-learn)"
    out[label] = {"test": [acc], "seconds": [seconds]}
    print(f"  {label}: test {acc:.4f} (val {val:.4f}; the sweep {seconds:.1f} s)", flush=True)
    return out


def recorder(results: dict[str, dict]):
    """``add(label, accuracy, seconds, note)``: one result into ``results``, printed."""

    def add(label, acc, seconds, note=""):
        r = results.setdefault(label, {"test": [], "seconds": []})
        r["test"].append(acc)
        r["seconds"].append(seconds)
        print(f"  {label}: test {acc:.4f} ({seconds:.0f} s{note})", flush=True)

    return add


def grid_folder(out: Path, model: str, rep: str, seed: int) -> Path:
    """The folder of ``model``'s ``wide=[false,true]`` group on representation ``rep``."""
    return out / (f"{model}-{seed}" if rep == "glove" else f"{model}-{rep}-{seed}")


def run_label(model: str, run: Path, rep: str) -> str:
    """The label of a run of the ``wide=[false,true]`` grid (from its folder's name) on
    representation ``rep``: ``kim_cnn wide``, ``kim_cnn (wordllama)``."""
    label = f"{model} wide" if "wide=true" in run.name.lower() else model
    return label if rep == "glove" else f"{label} ({rep})"


def lexical_folder(out: Path, rep: str, seed: int) -> Path:
    """The run of ``tfidf`` over representation ``rep``'s ids (labelled ``tfidf (rep)``)."""
    return out / f"lexical-{rep}-{seed}"


def lexical_on(url: str, rep: str, seed: int, out: Path):
    """``tfidf`` over the ids of representation ``rep``'s store (its tokenizer's ids): the
    lexical part of the wide models on that store, alone. Not an ensemble member (the GloVe
    store's ``tfidf`` is); it is what a wide model there must at least match."""
    import embcache

    return embcache.train(url, "tfidf", str(lexical_folder(out, rep, seed)),
                          config={"seed": seed}, overwrite=True)


def embcache_models(stores: dict[str, str], models: list[str], seeds: int,
                   out: Path) -> dict[str, dict]:
    """Every seed: ``tfidf`` and each dense model plain and wide on the GloVe store, each dense
    model plain and wide on the other representations' stores; then the seed's ensembles across
    them."""
    import embcache

    results: dict[str, dict] = {}
    add = recorder(results)

    for seed in range(seeds):
        print(f" seed {seed}", flush=True)
        runs: dict[str, tuple[str, float]] = {}  # label -> (run folder, train seconds)
        # The two lexical models as one group: one counting pass (nb is fitted by it and
        # validated in one epoch; tfidf trains on).
        lexical = embcache.train(stores["glove"], ["tfidf", "nb"], str(out / f"lexical-{seed}"),
                                 config={"seed": seed}, overwrite=True)
        for s in lexical.runs:
            label = Path(s.out).name  # the group's run folders: tfidf, nb
            runs[label] = (s.out, s.seconds)
            add(label, s.metrics["test_accuracy"], s.seconds, f", best epoch {s.best_epoch}")
        for rep, url in stores.items():  # the wide models' lexical part alone, on each store
            if rep != "glove":
                s = lexical_on(url, rep, seed, out)
                runs[f"tfidf ({rep})"] = (s.out, s.seconds)
                add(f"tfidf ({rep})", s.metrics["test_accuracy"], s.seconds,
                    f", best epoch {s.best_epoch}")
        for model in models:
            for rep, url in stores.items():
                folder = grid_folder(out, model, rep, seed)
                if (folder / "model.json").is_file():  # a lone run, from before the grid
                    shutil.rmtree(folder)
                group = embcache.train(url, model, str(folder), grid={"wide": [False, True]},
                                       config={"seed": seed}, overwrite=True)
                for run in group.runs:
                    label = run_label(model, Path(run.out), rep)
                    runs[label] = (run.out, run.seconds)
                    add(label, run.metrics["test_accuracy"], run.seconds,
                        f", best epoch {run.best_epoch}")
        score_ensembles(runs, models, stores, seed, out, add)
    return results


def score_ensembles(runs: dict, models: list[str], stores: dict[str, str], seed: int, out: Path,
                    add) -> None:
    """One seed's ensembles (:func:`ensembles`) of ``runs`` (label -> (run folder, train
    seconds)), each ``weighted`` and ``fit``, scored by the ``Scorer`` on the GloVe store's test
    split; ``add(label, accuracy, seconds, note)`` records each."""
    import embcache

    for i, (label, members) in enumerate(ensembles(list(runs), models, list(stores))):
        paths = [runs[m][0] for m in members]
        seconds = sum(runs[m][1] for m in members)
        for how in ("weighted", "fit"):
            t = time.perf_counter()
            scorer = embcache.Scorer(paths, ensemble=how, stores=list(stores.values()))
            if how == "fit":
                scorer.fit(out / f"ensemble-{seed}-{i}", store=stores["glove"])
            rows = scorer.classify(stores["glove"], split="test")
            acc = float((rows["ensemble_label"] == rows["true_label"]).mean())
            note = (f", chosen {scorer.fitted.chosen}, weights "
                    f"{[round(float(w), 2) for w in scorer.fitted.weights]}"
                    if how == "fit" else "")
            add(f"ensemble {how}: {label}", acc, seconds + time.perf_counter() - t, note)


def rescored(stores: dict[str, str], models: list[str], seeds: int, out: Path) -> dict[str, dict]:
    """``--rescore``: the runs an earlier ``bench-quality`` left under ``out`` (their cards'
    test accuracy and seconds), and their ensembles scored again with today's code."""
    import json

    results: dict[str, dict] = {}
    add = recorder(results)

    for seed in range(seeds):
        print(f" seed {seed}", flush=True)
        folders = {"tfidf": out / f"lexical-{seed}" / "tfidf", "nb": out / f"lexical-{seed}" / "nb"}
        folders.update({f"tfidf ({rep})": lexical_folder(out, rep, seed) for rep in stores
                        if (lexical_folder(out, rep, seed) / "model.json").is_file()})
        for model in models:
            for rep in stores:
                folder = grid_folder(out, model, rep, seed)
                # A lone run: the other representations' runs from before the wide grid.
                lone = (folder / "model.json").is_file()
                folders.update({run_label(model, run, rep): run
                                for run in ([folder] if lone else sorted(folder.iterdir()))})
        runs = {}
        for label, folder in folders.items():
            card = json.loads((folder / "model.json").read_text())
            runs[label] = (str(folder), card["training"]["seconds"])
            add(label, card["metrics"]["test_accuracy"], card["training"]["seconds"], ", trained before")
        score_ensembles(runs, models, stores, seed, out, add)
    return results


def ensembles(labels: list[str], models: list[str], reps: list[str]):
    """The ensembles measured: the two lexical models; each wide model with ``tfidf``, and with
    both lexical models; those with the model on the other representations; the model wide on
    every representation, alone and with ``tfidf``; both lexical models with every run of the
    model but its plain GloVe one; and, with several dense models, every run
    but the plain GloVe ones (the wide variants carry them) and every wide run."""
    lexical = [m for m in ("tfidf", "nb") if m in labels]
    out = [(" + ".join(lexical), lexical)] if len(lexical) == 2 else []
    for m in models:
        if "tfidf" not in labels or f"{m} wide" not in labels:
            continue
        others = [f"{m} ({r})" for r in reps if r != "glove" and f"{m} ({r})" in labels]
        for base in (["tfidf"], lexical) if len(lexical) == 2 else (["tfidf"],):
            out.append((" + ".join([*base, f"{m} wide"]), [*base, f"{m} wide"]))
            if others:
                out.append((" + ".join([*base, f"{m} wide", *others]), [*base, f"{m} wide", *others]))
        wides = [f"{m} wide", *(f"{m} wide ({r})" for r in reps if f"{m} wide ({r})" in labels)]
        if len(wides) > 1:
            out.append((" + ".join(wides), wides))
            out.append((" + ".join(["tfidf", *wides]), ["tfidf", *wides]))
            if len(lexical) == 2 and others:  # both lexical models and every run of the model
                every_m = [*lexical, f"{m} wide", *others, *wides[1:]]
                out.append((" + ".join(every_m), every_m))
    if len(models) > 1:
        every = [label for label in labels if label not in models and not label.startswith("tfidf (")]
        out.append((f"every run but plain GloVe ({len(every)})", every))
        wide = [label for label in labels if " wide" in label]
        if len(wide) > len(models):
            out.append((f"every wide run ({len(wide)})", wide))
    return out


def summarize(results: dict[str, dict]) -> list[list]:
    rows = []
    for label, r in results.items():
        t = r["test"]
        rng = f"{min(t):.4f}-{max(t):.4f}" if len(t) > 1 else "-"
        rows.append([label, f"{statistics.mean(t):.4f}", rng, len(t),
                     f"{statistics.median(r['seconds']):.0f}"])
    return rows


def picture(all_results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_results), figsize=(6 * len(all_results), 4.5))
    for ax, (corpus, results) in zip(axes if len(all_results) > 1 else [axes], all_results.items()):
        for label, r in results.items():
            x, y = statistics.median(r["seconds"]), statistics.mean(r["test"])
            ax.scatter([x], [y])
            ax.annotate(label, (x, y), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("training seconds (median, 2 cores)")
        ax.set_ylabel("test accuracy (mean of seeds)")
        ax.set_title(corpus)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    from jobs.bench.common import table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="bench-out/quality")
    p.add_argument("--corpora", default="news20,ag_news")
    p.add_argument("--models", default="kim_cnn", help="dense models, each also with wide=true")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="keep complete stores")
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: score the ensembles of the runs an earlier run left")
    p.add_argument("--reps", default="glove,wordllama",
                   help="representations: glove (always) and wordllama, minilm")
    a = p.parse_args(argv)
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    everything = {}
    for name in a.corpora.split(","):
        print(f"{name}: building the stores", flush=True)
        reps = ["glove"] + [r for r in a.reps.split(",") if r and r != "glove"]
        stores = {rep: build_store(name, data, out, a.reuse, rep) for rep in reps}
        print(f"{name}: baselines", flush=True)
        results = sklearn_baselines(texts_by_split(name, data, stores["glove"]))
        print(f"{name}: embcache models", flush=True)
        models = [m for m in a.models.split(",") if m]
        results.update((rescored if a.rescore else embcache_models)(stores, models, a.seeds,
                                                                    out / "runs" / name))
        everything[name] = results
        print(f"\n{name} (test accuracy on the store's split)")
        print(table(["model", "test accuracy (mean)", "range", "seeds", "train s (median)"],
                    summarize(results)), flush=True)
    path = out / "quality.json"  # corpora measured by earlier runs stay (one picture of all)
    kept = json.loads(path.read_text()) if path.exists() else {}
    everything = {**kept, **everything}
    path.write_text(json.dumps(everything, indent=1))
    picture(everything, out / "quality.png")
    print(f"\nresults: {out / 'quality.json'}, picture: {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
