# embcache: every target bootstraps .venv on first use. User choices pass through; the defaults
# of the options themselves live in the `embcache` command (see `embcache COMMAND --help`).
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
DATA_DIR ?= data
STORE    ?= news20.zarr
MODEL    ?= cnn
RUNS     ?= runs
ARGS     ?=
CORPUS   ?= $(DATA_DIR)/news20.tar.gz
VECTORS  ?= $(DATA_DIR)/glove.6B.50d.txt.gz
ENCODER  ?= $(DATA_DIR)/all-MiniLM-L6-v2.zip
WORDLLAMA = $(DATA_DIR)/wordllama-l2-supercat-256/l2_supercat_256.safetensors

GLOVE_URL  := https://nlp.stanford.edu/data/glove.6B.zip
NEWS20_URL := http://www.cs.cmu.edu/afs/cs.cmu.edu/project/theo-20/www/data/news20.tar.gz

.PHONY: FORCE install store embed-corpus info train runs score test test-fast check bench bench-embed bench-train bench-quality bench-lexical bench-score bench-scale bench-encoder bench-vectors bench-integrity bench-tune bench-held bench-precision bench-rehearsal data clean help cli-reference

# The editable install is setuptools' "strict" mode: build/__editable__.* holds a tree of links to
# the package's files laid out as `embcache` (jobs/api -> embcache/, cache/ -> embcache/cache/...),
# which IDEs, pyright and mypy follow (the default mode's import hook they cannot). Edits to a file
# show at once; a file added or removed needs the links redone, so the install reruns when the
# list of package files changes (.venv/.files), not only when pyproject.toml does.
PACKAGE_FILES := $(sort $(wildcard jobs/api/*.py jobs/api/py.typed cache/*.py models/*.py jobs/*.py))
$(BIN)/.files: FORCE
	@mkdir -p $(BIN)
	@echo '$(PACKAGE_FILES)' | cmp -s - $@ || echo '$(PACKAGE_FILES)' > $@

$(BIN)/.installed: pyproject.toml $(BIN)/.files
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]' --config-settings editable_mode=strict
	@touch $@

FORCE:

install: $(BIN)/.installed

define need_data
	@for f in $(1); do test -f $$f || { \
	  echo "Missing $$f."; \
	  echo "  Point DATA_DIR at a folder holding news20.tar.gz and glove.6B.50d.txt.gz, e.g."; \
	  echo "    make $@ DATA_DIR=../shared/data"; \
	  echo "  or download them into $(DATA_DIR)/ with: make data"; \
	  echo "    ($(NEWS20_URL)"; \
	  echo "     $(GLOVE_URL), member glove.6B.50d.txt)"; \
	  exit 1; }; done
endef

# $(call embed,OPTIONS): build $(STORE) unless it is complete (--exist-ok: no chunk is read);
# --overwrite among OPTIONS rebuilds it, --repair verifies it and rewrites damaged blocks.
define embed
	$(call need_data,$(CORPUS) $(VECTORS))
	$(BIN)/embcache embed-corpus --corpus $(CORPUS) --vectors $(VECTORS) --strip-headers \
	    --out $(STORE) $(if $(filter --overwrite --repair,$(1)),,--exist-ok) $(1)
endef

embed-corpus: install
	$(call embed,$(ARGS))
	$(BIN)/embcache info $(STORE)

# What train, score and the benchmarks need: the store, built if missing. ARGS belong to the
# target named on the command line (e.g. `make train ARGS=--overwrite` retrains, it does not
# rebuild the store); EMBED_ARGS are embed-corpus options for a store built on the way.
EMBED_ARGS ?=
store: install
	$(call embed,$(EMBED_ARGS))

info: install
	$(BIN)/embcache info $(STORE)

comma := ,
empty :=
space := $(empty) $(empty)
# $(call run_out,NAMES): --out for `embcache train`: a lone model's run folder, or for a group
# (several models) the parent folder of their runs; either way each lands in $(RUNS)/<name>.
run_out = $(if $(word 2,$(1)),$(RUNS),$(RUNS)/$(strip $(1)))

# make train MODEL=cnn -> $(RUNS)/cnn; MODEL=cnn,kim_cnn,fasttext trains the three as one group
# from one stream of the store -> $(RUNS)/cnn, $(RUNS)/kim_cnn, $(RUNS)/fasttext.
train: store
	$(BIN)/embcache train --store $(STORE) --model $(MODEL) \
	  --out $(call run_out,$(subst $(comma),$(space),$(MODEL))) $(ARGS)

# make score: the held-out test split of $(STORE), scored by every model in MODELS; those whose
# run folder has no card yet are trained first, together as one group.
MODELS ?= cnn,fasttext
OUT    ?= predictions.csv
MODEL_NAMES = $(subst $(comma),$(space),$(MODELS))
RUN_DIRS = $(addprefix $(RUNS)/,$(MODEL_NAMES))
UNTRAINED = $(strip $(foreach m,$(MODEL_NAMES),$(if $(wildcard $(RUNS)/$(m)/model.json),,$(m))))

score: store
	$(if $(UNTRAINED),$(BIN)/embcache train --store $(STORE) \
	  --model $(subst $(space),$(comma),$(UNTRAINED)) --out $(call run_out,$(UNTRAINED)))
	$(BIN)/embcache score --models $(subst $(space),$(comma),$(RUN_DIRS)) --input $(STORE) \
	  --split test --out $(OUT) $(ARGS)

# make runs: every trained run under $(RUNS), best validation accuracy first, and runs.png.
runs: install
	$(BIN)/embcache runs $(RUNS) $(ARGS)

# Fetches the two files the main job needs; for the rest the tests use (CI=true), says exactly
# what to put where (the files come from their publishers, under their own licences).
data:
	mkdir -p $(DATA_DIR)
	test -f $(DATA_DIR)/news20.tar.gz || curl -fL -o $(DATA_DIR)/news20.tar.gz $(NEWS20_URL)
	test -f $(DATA_DIR)/glove.6B.50d.txt.gz || { \
	  curl -fL -o $(DATA_DIR)/glove.6B.zip $(GLOVE_URL) && \
	  unzip -p $(DATA_DIR)/glove.6B.zip glove.6B.50d.txt | gzip > $(DATA_DIR)/glove.6B.50d.txt.gz; }
	@test -f $(DATA_DIR)/ag_news_csv/test.csv || echo "Missing $(DATA_DIR)/ag_news_csv/test.csv \
	  and classes.txt: the AG News CSV (Zhang et al. 2015; label, title, description; no header)"
	@test -f $(DATA_DIR)/all-MiniLM-L6-v2.zip || echo "Missing $(DATA_DIR)/all-MiniLM-L6-v2.zip: \
	  the sentence-transformers/all-MiniLM-L6-v2 folder from Hugging Face, zipped"
	@test -f $(WORDLLAMA) || echo "Missing $(dir $(WORDLLAMA)): l2_supercat_256.safetensors and \
	  l2_supercat_tokenizer_config.json from Hugging Face dleemiller/word-llama-l2-supercat"

help:
	@echo "make install        create .venv and install embcache (every target does it on first use)"
	@echo "make embed-corpus   build STORE (news20.zarr) from 20 Newsgroups and GloVe (DATA_DIR=...)"
	@echo "make store          the store only if missing (train, score and bench build it so)"
	@echo "make info           describe the store"
	@echo "make train          train MODEL=cnn (or a,b,c as one group) into RUNS/"
	@echo "make runs           compare the trained runs"
	@echo "make score          score the store's test split with the trained runs"
	@echo "make test           the linter and the whole suite (CI=true: real-data checks too)"
	@echo "make test-fast      the linter and the quick tests (not slow, not realdata): the edit loop"
	@echo "make check          the same as make test"
	@echo "make bench          every benchmark, each also alone: bench-embed, bench-train,"
	@echo "                    bench-score, bench-scale, bench-encoder, bench-vectors,"
	@echo "                    bench-integrity, bench-tune, bench-lexical, bench-held (a split held"
	@echo "                    in memory), bench-precision (float32 and bfloat16), bench-rehearsal"
	@echo "                    (a synthetic corpus end to end, Dask scoring), bench-shards (sharded"
	@echo "                    stores against unsharded, local and S3); results in BENCHMARKS.md"
	@echo "make bench-quality  test accuracy against TF-IDF + a linear model (scikit-learn), 3 seeds"
	@echo "                    (not part of make bench; buckets against padding: bench-train ARGS=--quality)"
	@echo "make data           fetch news20.tar.gz and glove.6B.50d.txt.gz into DATA_DIR; name"
	@echo "                    the other data sets the tests read, and where each goes"
	@echo "make cli-reference  regenerate docs/cli.md, the CLI reference"
	@echo "make clean          remove the store, runs and bench-out/"

# docs/cli.md, the CLI reference, from the click commands (test_cli.py fails when it is stale).
cli-reference: install
	$(BIN)/python -m embcache.jobs.reference docs/cli.md

# make test is what CI runs: the linter, then the whole suite (real-data checks included).
test: install
	$(BIN)/ruff check cache jobs models tests
	$(BIN)/mypy
	$(BIN)/mypy -p embcache
	DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest $(ARGS)

# The edit-run loop: the linter and the tests not marked slow or realdata (68 s here; make test: ~15 min).
test-fast: install
	$(BIN)/ruff check cache jobs models tests
	DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/python -m pytest -q -m "not slow and not realdata" $(ARGS)

check: test

bench: bench-embed bench-train bench-score bench-scale bench-encoder bench-vectors bench-integrity bench-tune bench-lexical bench-held bench-precision bench-shards

bench-embed: install
	$(call need_data,$(CORPUS) $(VECTORS))
	$(BIN)/python -m jobs.bench.embed --corpus $(CORPUS) --vectors $(VECTORS) $(ARGS)

clean:
	rm -rf $(STORE) $(RUNS) bench-out .pytest_cache

# A held split: peak RSS and samples/s, batches gathered from NumPy rows against the old tensor.
# bench-held measures the stores ARGS names (--store, repeatable), else $(STORE), built if absent.
HELD_NAMED = $(findstring --store,$(ARGS))
bench-held: $(if $(HELD_NAMED),install,store)
	$(BIN)/python -m jobs.bench.held $(if $(HELD_NAMED),,--store $(STORE)) $(ARGS)

# float32 against bfloat16: every built-in model's samples/s, and kim_cnn's accuracy (3 seeds).
bench-precision: store
	$(BIN)/python -m jobs.bench.precision --store $(STORE) $(ARGS)

bench-train: store
	$(BIN)/python -m jobs.bench.train --store $(STORE) --vectors $(VECTORS) $(ARGS)

# Accuracy against TF-IDF + a linear model (scikit-learn) on the stores' own split: 20 Newsgroups
# and AG News with the lexical channel, tfidf and kim_cnn (also wide) over 3 seeds.
# What the lexical channel costs: token_ids' bytes, and the pipeline of models that read no ids.
bench-lexical: store
	$(BIN)/python -m jobs.bench.lexical --store $(STORE) $(ARGS)

bench-quality: install
	$(call need_data,$(CORPUS) $(VECTORS) $(DATA_DIR)/ag_news_csv/test.csv)
	$(BIN)/python -m jobs.bench.quality --data $(DATA_DIR) $(ARGS)

bench-score: store
	$(BIN)/python -m jobs.bench.score --store $(STORE) --vectors $(VECTORS) $(ARGS)

bench-encoder: install
	$(call need_data,$(CORPUS) $(ENCODER))
	$(BIN)/python -m jobs.bench.encoder --corpus $(CORPUS) --encoder $(ENCODER) $(ARGS)

# The quality/cost table: GloVe, WordLlama and MiniLM stores, float16 and int8, their heads'
# accuracy. Stores and runs stay in bench-out/vectors (ARGS=--reuse keeps complete ones).
bench-vectors: install
	$(call need_data,$(CORPUS) $(VECTORS) $(ENCODER) $(WORDLLAMA))
	$(BIN)/python -m jobs.bench.vectors --data $(DATA_DIR) $(ARGS)

# What the integrity checks cost: the input pipeline with and without crc32c, verify against a
# full pass, the open-time listing (stores in bench-out/integrity; ARGS=--reuse keeps them).
bench-integrity: install
	$(call need_data,$(CORPUS) $(VECTORS) $(WORDLLAMA))
	$(BIN)/python -m jobs.bench.integrity --data $(DATA_DIR) $(ARGS)

# One Optuna study three ways: embcache tune --parallel 8, Optuna's documented Keras way, --parallel 1.
bench-tune: store
	$(BIN)/python -m jobs.bench.tune --store $(STORE) $(ARGS)

bench-scale: install
	$(call need_data,$(CORPUS) $(VECTORS))
	$(BIN)/python -m jobs.bench.scale --corpus $(CORPUS) --vectors $(VECTORS) $(ARGS)

# The pipeline at scale on a synthetic corpus (ARGS="--docs 1000000"): embed, verify, an epoch,
# score in one process against score --scheduler local:2 (bench-out/rehearsal; --reuse keeps it).
bench-rehearsal: install
	$(call need_data,$(VECTORS))
	$(BIN)/python -m jobs.bench.rehearsal --vectors $(VECTORS) $(ARGS)

# Sharded stores (--shard-blocks K) against unsharded: objects, embed time, reads from local disk
# and a local S3 (moto), GET requests per pass, verify.
bench-shards: install
	$(call need_data,$(CORPUS) $(VECTORS))
	$(BIN)/python -m jobs.bench.shards --corpus $(CORPUS) --vectors $(VECTORS) $(ARGS)
