// spillway._spillway: the library for Python. Models, tokenizers, sessions, streaming
// perplexity and generation, with numpy at the boundary. The package python/spillway
// re-exports these and adds the Policy base class for policies written in Python.
#include <fmt/core.h>
#include <nanobind/stl/filesystem.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstring>

#include "common.h"
#include "spillway/core/build_info.h"
#include "spillway/core/error.h"
#include "spillway/core/thread_pool.h"
#include "spillway/model/observer.h"
#include "spillway/ops/matmul.h"
#include "spillway/session/generate.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"

namespace spillway::python {

using namespace nb::literals;

std::vector<TokenId> token_ids(nb::handle ids, int64_t n_vocab, const char* what) {
  nb::module_ np = nb::module_::import_("numpy");
  nb::object arr = np.attr("asarray")(ids);
  const auto ndim = nb::cast<int64_t>(arr.attr("ndim"));
  const auto size = nb::cast<int64_t>(arr.attr("size"));
  if (ndim != 1 && !(ndim == 0 && size == 0))
    throw InvalidArgument(
        fmt::format("{}: expected a 1-D sequence of token ids, got {} dimension(s)", what, ndim));
  if (size == 0) return {};
  if (!nb::cast<bool>(np.attr("issubdtype")(arr.attr("dtype"), np.attr("integer"))))
    throw InvalidArgument(fmt::format("{}: token ids must be integers, got dtype {}", what,
                                      py_str(arr.attr("dtype"))));
  nb::object a64 = np.attr("ascontiguousarray")(arr, "dtype"_a = "int64");
  auto view = nb::cast<nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig>>(a64);
  std::vector<TokenId> out(static_cast<size_t>(size));
  const int64_t* p = view.data();
  for (int64_t i = 0; i < size; ++i) {
    if (p[i] < 0 || p[i] >= n_vocab)
      throw InvalidArgument(
          fmt::format("{}: token id {} at index {} is outside the vocabulary "
                      "[0, {})",
                      what, p[i], i, n_vocab));
    out[static_cast<size_t>(i)] = static_cast<TokenId>(p[i]);
  }
  return out;
}

namespace {

// Python exception classes mirroring core/error.h.
PyObject* g_error = nullptr;
PyObject* g_io_error = nullptr;
PyObject* g_format_error = nullptr;
PyObject* g_unsupported_error = nullptr;
PyObject* g_invalid_argument = nullptr;

PyObject* new_exception(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string full = fmt::format("spillway.{}", name);
  PyObject* e = PyErr_NewExceptionWithDoc(full.c_str(), doc, bases, nullptr);
  if (!e) throw nb::python_error();
  m.attr(name) = nb::handle(e);
  return e;
}

void bind_errors(nb::module_& m) {
  g_error = new_exception(m, "Error", PyExc_Exception,
                          "Base of every error spillway raises on purpose (spillway::Error).");
  nb::object io_bases = nb::make_tuple(nb::handle(g_error), nb::handle(PyExc_OSError));
  g_io_error = new_exception(m, "IoError", io_bases.ptr(),
                             "A file could not be opened, mapped or read (also an OSError).");
  g_format_error = new_exception(
      m, "FormatError", g_error,
      "A file's content does not follow its format (GGUF structure, metadata, tensor shapes).");
  g_unsupported_error =
      new_exception(m, "UnsupportedError", g_error,
                    "Well-formed input this build does not support (architecture, quant type).");
  nb::object arg_bases = nb::make_tuple(nb::handle(g_error), nb::handle(PyExc_ValueError));
  g_invalid_argument = new_exception(
      m, "InvalidArgument", arg_bases.ptr(),
      "A bad argument: policy spec, option value, token id, a prompt that does not fit the "
      "cache (also a ValueError).");
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(g_invalid_argument, e.what());
    } catch (const IoError& e) {
      PyErr_SetString(g_io_error, e.what());
    } catch (const FormatError& e) {
      PyErr_SetString(g_format_error, e.what());
    } catch (const UnsupportedError& e) {
      PyErr_SetString(g_unsupported_error, e.what());
    } catch (const Error& e) {
      PyErr_SetString(g_error, e.what());
    }
  });
}

// --- model and tokenizer -----------------------------------------------------------------

struct PyTokenizer {
  std::shared_ptr<const model::Model> model;
  const Tokenizer& tok() const { return model->tokenizer(); }
};

nb::ndarray<nb::numpy, TokenId> encode(const Tokenizer& tok, const std::string& text,
                                       std::optional<bool> add_bos, std::optional<bool> add_eos,
                                       bool parse_special) {
  EncodeOptions eo;
  eo.add_bos = add_bos;
  eo.add_eos = add_eos;
  eo.parse_special = parse_special;
  std::vector<TokenId> ids;
  {
    nb::gil_scoped_release release;
    ids = tok.encode(text, eo);
  }
  const size_t n = ids.size();
  return to_numpy(std::move(ids), {n});
}

// Decoded bytes as str; an incomplete or invalid UTF-8 sequence becomes U+FFFD.
nb::str utf8_text(const std::string& bytes) {
  PyObject* s =
      PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
  if (!s) throw nb::python_error();
  return nb::steal<nb::str>(s);
}

nb::dict config_dict(const model::ModelConfig& c) {
  nb::dict d;
  d["architecture"] = c.architecture;
  d["name"] = c.name;
  d["n_layer"] = c.n_layer;
  d["n_embd"] = c.n_embd;
  d["n_head"] = c.n_head;
  d["n_head_kv"] = c.n_head_kv;
  d["head_dim"] = c.head_dim;
  d["n_ff"] = c.n_ff;
  d["n_vocab"] = c.n_vocab;
  d["n_ctx_train"] = c.n_ctx_train;
  d["rms_eps"] = c.rms_eps;
  d["tied_output"] = c.tied_output;
  nb::list windows;
  for (const auto& l : c.layers) windows.append(l.window);
  d["layer_windows"] = windows;
  return d;
}

// --- sessions ----------------------------------------------------------------------------

struct PySession {
  std::shared_ptr<const model::Model> model;
  std::unique_ptr<Session> session;
  nb::object observer;  // the attached AttentionStats (kept alive while attached)
};

struct PyCheckpoint {
  std::shared_ptr<const Session::Checkpoint> cp;
  const PySession* owner = nullptr;
};

nb::ndarray<nb::numpy, float> last_logits(const PySession& s) {
  const float* l = s.session->last_logits();
  const size_t n = static_cast<size_t>(s.model->config().n_vocab);
  return to_numpy(std::vector<float>(l, l + n), {n});
}

nb::object feed(PySession& s, nb::handle ids, bool all_logits) {
  const int64_t n_vocab = s.model->config().n_vocab;
  const std::vector<TokenId> tokens = token_ids(ids, n_vocab, "Session.feed");
  if (tokens.empty()) throw InvalidArgument("Session.feed: no tokens to feed");
  if (!all_logits) {
    {
      nb::gil_scoped_release release;
      s.session->feed(tokens);
    }
    return nb::cast(last_logits(s));
  }
  const size_t n = tokens.size();
  std::vector<float> out(n * static_cast<size_t>(n_vocab));
  const int64_t base = s.session->n_past();
  {
    nb::gil_scoped_release release;
    s.session->feed(tokens, [&](int64_t i, const float* logits) {
      std::memcpy(out.data() + static_cast<size_t>(i - base) * static_cast<size_t>(n_vocab), logits,
                  static_cast<size_t>(n_vocab) * sizeof(float));
      return true;
    });
  }
  return nb::cast(to_numpy(std::move(out), {n, static_cast<size_t>(n_vocab)}));
}

// --- perplexity --------------------------------------------------------------------------

std::vector<PolicyChoice> policy_list(nb::handle policies) {
  std::vector<PolicyChoice> out;
  if (nb::isinstance<nb::str>(policies) || !nb::hasattr(policies, "__iter__")) {
    out.push_back(policy_choice(policies, ""));
    return out;
  }
  for (nb::handle p : policies) out.push_back(policy_choice(p, ""));
  if (out.empty()) throw InvalidArgument("perplexity: no policies given");
  return out;
}

std::vector<PerplexityResult> perplexity(const PyModel& m, nb::handle ids, nb::handle policies,
                                         int64_t chunk, int64_t score_from, int threads,
                                         nb::object progress,
                                         std::optional<std::string> reference) {
  const std::vector<TokenId> tokens = token_ids(ids, m.model->config().n_vocab, "perplexity");
  // Every policy is checked before the long work starts.
  const std::vector<PolicyChoice> choices = policy_list(policies);
  std::optional<kv::PolicySpec> ref;
  if (reference) ref = kv::PolicySpec(*reference);
  std::vector<PerplexityResult> results;
  nb::gil_scoped_release release;
  ThreadPool pool(threads);
  for (const PolicyChoice& c : choices) {
    PerplexityOptions po;
    po.policy = c.spec;
    po.policy_factory = c.factory;
    po.chunk = chunk;
    po.score_from = score_from;
    po.reference = ref;
    if (progress.is_valid() && !progress.is_none())
      po.progress = [&progress](int64_t done, int64_t total) {
        nb::gil_scoped_acquire gil;
        progress(done, total);
      };
    results.push_back(evaluate_perplexity(*m.model, tokens, po, &pool));
  }
  return results;
}

// --- generation --------------------------------------------------------------------------

// The library's Generator behind a Python iterator: the prompt is fed on the first
// __next__ (checked as spillway::generate checks it), then each __next__ returns the next
// non-empty piece of text; forward passes release the GIL.
struct PyGenerator {
  nb::object session_obj;  // the PySession (the caller's, or one made for this generation)
  PySession* s = nullptr;
  std::vector<TokenId> prompt;
  std::unique_ptr<Generator> gen;
  bool started = false;

  nb::str next() {
    if (!started) {
      check_prompt_fits(*s->session, static_cast<int64_t>(prompt.size()));
      nb::gil_scoped_release release;
      gen->feed(prompt);
      started = true;
    }
    for (;;) {
      std::optional<GeneratedPiece> piece;
      {
        nb::gil_scoped_release release;
        piece = gen->next();
      }
      if (!piece) throw nb::stop_iteration();
      if (!piece->text.empty()) return utf8_text(piece->text);
    }
  }
};

// The garbage collector sees what a session holds in C++: its Python policies and its
// observer. A policy (or its class, through a notebook's globals) often refers back to the
// session; without this edge such a cycle would never be collected.
int session_traverse(PyObject* self, visitproc visit, void* arg) {
#if PY_VERSION_HEX >= 0x03090000
  Py_VISIT(Py_TYPE(self));
#endif
  if (!nb::inst_ready(self)) return 0;
  const PySession* s = nb::inst_ptr<PySession>(self);
  if (s->session) {
    const kv::Cache& cache = s->session->cache();
    for (int g = 0; g < cache.n_groups(); ++g) Py_VISIT(python_policy_ptr(cache.group_policy(g)));
  }
  Py_VISIT(s->observer.ptr());
  return 0;
}

PyType_Slot kSessionSlots[] = {{Py_tp_traverse, reinterpret_cast<void*>(session_traverse)},
                               {0, nullptr}};

constexpr const char* kSessionDoc = R"(One token stream through a model under a KV-cache policy.

Session(model, policy="full", threads=0, max_batch=64, max_stream=0, cache_options="")

policy: a spec string ("full", "window:W", "sink:S+W", "recompute:W", "h2o:H+W", ...,
optionally with ",positions=absolute", ",kv=f16", ",local=policy"), or a spillway.Policy
instance written in Python (the session plans with its own deep copy of it; kv= and
local= then come from cache_options, e.g. "kv=f16").
threads: threads of the session's own pool (0: all cores).
max_batch: most tokens one forward pass takes when feed() gets many.
max_stream: expected stream length (pre-sizes a growing cache such as "full"; 0: unknown).

A session belongs to one thread at a time; many sessions may share one Model, each on its
own thread. Forward passes release the GIL.)";

}  // namespace

}  // namespace spillway::python

using namespace spillway;
using namespace spillway::python;

NB_MODULE(_spillway, m) {
  m.doc() = "spillway: streaming LLM inference with a sink-aware KV cache (C++ core)";
  bind_errors(m);
  bind_policy(m);
  m.def(
      "build_info",
      [] {
        nb::dict d;
        d["version"] = version();
        d["commit"] = source_commit();
        d["kernel_isa"] = ops::kernel_isa();
        return d;
      },
      "What build is running: the library's version, the source commit it was built from "
      "(git describe; 'unknown' outside a checkout) and the kernel family this process chose "
      "(SPILLWAY_ISA or the widest the CPU runs). Results record it as their provenance.");

  nb::class_<PyTokenizer>(m, "Tokenizer",
                          "The model's tokenizer (byte-level BPE or SentencePiece, from GGUF "
                          "metadata). Ids match llama.cpp's.")
      .def(
          "encode",
          [](const PyTokenizer& t, const std::string& text, std::optional<bool> add_bos,
             std::optional<bool> add_eos,
             bool parse_special) { return encode(t.tok(), text, add_bos, add_eos, parse_special); },
          "text"_a, "add_bos"_a = nb::none(), "add_eos"_a = nb::none(), "parse_special"_a = false,
          "Token ids of `text` (int32 array). add_bos / add_eos: None follows the model's "
          "metadata. parse_special: read control tokens written in the text ('<|im_start|>') as "
          "single ids.")
      .def(
          "decode",
          [](const PyTokenizer& t, nb::handle ids, bool keep_control) {
            const auto v = token_ids(ids, t.tok().vocab_size(), "Tokenizer.decode");
            return utf8_text(t.tok().decode(v, keep_control));
          },
          "ids"_a, "keep_control"_a = false,
          "Text of the ids (BOS/EOS and other control tokens skipped unless keep_control; "
          "incomplete UTF-8 becomes U+FFFD).")
      .def(
          "token_bytes",
          [](const PyTokenizer& t, int64_t id) {
            if (id < 0 || id >= t.tok().vocab_size())
              throw InvalidArgument(
                  fmt::format("token id {} outside [0, {})", id, t.tok().vocab_size()));
            const std::string b = t.tok().token_bytes(static_cast<TokenId>(id));
            return nb::bytes(b.data(), b.size());
          },
          "id"_a, "The raw bytes one token stands for.")
      .def(
          "piece",
          [](const PyTokenizer& t, int64_t id) {
            if (id < 0 || id >= t.tok().vocab_size())
              throw InvalidArgument(
                  fmt::format("token id {} outside [0, {})", id, t.tok().vocab_size()));
            return t.tok().piece(static_cast<TokenId>(id));
          },
          "id"_a, "The vocabulary entry as stored in the file ('Ġthe').")
      .def(
          "find", [](const PyTokenizer& t, const std::string& text) { return t.tok().find(text); },
          "text"_a, "Id of the token written exactly as `text`, or None.")
      .def(
          "is_eog",
          [](const PyTokenizer& t, int64_t id) { return t.tok().is_eog(static_cast<TokenId>(id)); },
          "id"_a, "Whether the id ends generation (EOS, EOT, <|im_end|>, ...).")
      .def_prop_ro("vocab_size", [](const PyTokenizer& t) { return t.tok().vocab_size(); })
      .def_prop_ro(
          "model_name", [](const PyTokenizer& t) { return std::string(t.tok().model_name()); },
          "'gpt2' (byte-level BPE) or 'llama' (SentencePiece).")
      .def_prop_ro("pre_name", [](const PyTokenizer& t) { return std::string(t.tok().pre_name()); })
      .def_prop_ro("bos", [](const PyTokenizer& t) { return t.tok().bos(); })
      .def_prop_ro("eos", [](const PyTokenizer& t) { return t.tok().eos(); })
      .def_prop_ro("add_bos", [](const PyTokenizer& t) { return t.tok().add_bos(); })
      .def("__len__", [](const PyTokenizer& t) { return t.tok().vocab_size(); })
      .def("__repr__", [](const PyTokenizer& t) {
        return fmt::format("<spillway.Tokenizer {} ({}), {} tokens>", t.tok().model_name(),
                           t.tok().pre_name(), t.tok().vocab_size());
      });

  nb::class_<PyModel>(m, "Model",
                      "A GGUF model, memory-mapped and validated; immutable and shareable by "
                      "any number of sessions and threads. Make one with Model.load(path).")
      .def_static(
          "load",
          [](const std::filesystem::path& path) {
            std::unique_ptr<model::Model> mdl;
            {
              nb::gil_scoped_release release;
              mdl = model::Model::load(path.string());
            }
            return PyModel{std::shared_ptr<const model::Model>(std::move(mdl)), path.string()};
          },
          "path"_a,
          "Opens and validates a GGUF file and binds it with the architecture its metadata "
          "names. Raises IoError (cannot read), FormatError (bad structure, missing or "
          "mis-shaped tensor), UnsupportedError (architecture or type not supported).")
      .def_ro("path", &PyModel::path)
      .def_prop_ro("architecture", [](const PyModel& m) { return m.model->config().architecture; })
      .def_prop_ro(
          "config", [](const PyModel& m) { return config_dict(m.model->config()); },
          "Hyperparameters (a new dict each time): architecture, name, n_layer, n_embd, "
          "n_head, n_head_kv, head_dim, n_ff, n_vocab, n_ctx_train, rms_eps, "
          "tied_output, layer_windows (0: global layer, else its native window).")
      .def_prop_ro("tokenizer", [](const PyModel& m) { return PyTokenizer{m.model}; })
      .def_prop_ro("n_vocab", [](const PyModel& m) { return m.model->config().n_vocab; })
      .def_prop_ro("chat_template", [](const PyModel& m) { return m.model->chat_template(); })
      .def_prop_ro("weight_bytes_per_token",
                   [](const PyModel& m) { return m.model->weight_bytes_per_token(); })
      .def(
          "tokenize",
          [](const PyModel& m, const std::string& text, std::optional<bool> add_bos,
             bool parse_special) {
            return encode(m.model->tokenizer(), text, add_bos, std::nullopt, parse_special);
          },
          "text"_a, "add_bos"_a = nb::none(), "parse_special"_a = false,
          "Token ids of `text` as an int32 array (as `spillway tokenize` gives them).")
      .def(
          "detokenize",
          [](const PyModel& m, nb::handle ids, bool keep_control) {
            const auto v = token_ids(ids, m.model->config().n_vocab, "Model.detokenize");
            return utf8_text(m.model->tokenizer().decode(v, keep_control));
          },
          "ids"_a, "keep_control"_a = false, "Text of the ids.")
      .def("__repr__", [](const PyModel& m) {
        const auto& c = m.model->config();
        return fmt::format("<spillway.Model '{}' {} {} layers, vocab {}>", m.path, c.architecture,
                           c.n_layer, c.n_vocab);
      });

  nb::class_<PyCheckpoint>(m, "Checkpoint",
                           "A copy of a session's stream state (Session.checkpoint()).");

  nb::class_<PySession>(m, "Session", kSessionDoc, nb::type_slots(kSessionSlots))
      .def(
          "__init__",
          [](PySession* self, const PyModel& m, nb::handle policy, int threads, int64_t max_batch,
             int64_t max_stream, const std::string& cache_options) {
            PolicyChoice c = policy_choice(policy, cache_options);
            SessionOptions so;
            so.policy = c.spec;
            so.policy_factory = c.factory;
            so.threads = threads;
            so.max_batch = max_batch;
            so.max_stream = max_stream;
            if (max_batch < 1) throw InvalidArgument("Session: max_batch must be >= 1");
            auto session = std::make_unique<Session>(*m.model, so);
            new (self) PySession{m.model, std::move(session), nb::object()};
          },
          "model"_a, "policy"_a = "full", "threads"_a = 0, "max_batch"_a = 64, "max_stream"_a = 0,
          "cache_options"_a = "")
      .def("feed", &feed, "ids"_a, "all_logits"_a = false,
           "Feeds token ids in order (the GIL is released during the forward passes). Returns "
           "the logits after the last token ([n_vocab] float32), or with all_logits=True every "
           "token's logits ([len(ids), n_vocab]); row i predicts the token after ids[i].")
      .def(
          "advance",
          [](PySession& s, nb::handle ids) {
            const auto tokens = token_ids(ids, s.model->config().n_vocab, "Session.advance");
            nb::gil_scoped_release release;
            s.session->advance(tokens);
          },
          "ids"_a,
          "Feeds tokens whose logits nobody needs (their K/V still go into the cache); "
          "`logits` is not updated.")
      .def_prop_ro(
          "logits",
          [](const PySession& s) -> nb::object {
            if (!s.session->last_logits()) return nb::none();
            return nb::cast(last_logits(s));
          },
          "Logits after the last fed token ([n_vocab] float32, a copy), or None.")
      .def(
          "reset", [](PySession& s) { s.session->reset(); },
          "Forgets the stream: the next token is stream index 0.")
      .def_prop_ro(
          "n_past", [](const PySession& s) { return s.session->n_past(); },
          "Tokens fed since the last reset.")
      .def_prop_ro(
          "kv_bytes", [](const PySession& s) { return s.session->storage().bytes(); },
          "Bytes of KV storage now.")
      .def_prop_ro("kv_bytes_peak", [](const PySession& s) { return s.session->kv_bytes_peak(); })
      .def_prop_ro(
          "spec", [](const PySession& s) { return s.session->cache().describe(); },
          "The cache's policy in words.")
      .def_prop_ro(
          "capacity", [](const PySession& s) { return s.session->cache().capacity(); },
          "Tokens a query attends to at most (None: unbounded).")
      .def_prop_ro("n_slots", [](const PySession& s) { return s.session->policy().n_slots(); })
      .def_prop_ro(
          "policy_object",
          [](const PySession& s) { return python_policy_object(s.session->policy()); },
          "The session's copy of its Python policy (None for a spec string).")
      .def(
          "slot_contents",
          [](const PySession& s) {
            std::vector<int64_t> v = s.session->policy().slot_contents();
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          "Stream index held by each slot of the policy (-1: empty), int64.")
      .def(
          "set_observer",
          [](PySession& s, nb::object observer) {
            if (observer.is_none()) {
              s.session->set_observer(nullptr);
              s.observer = nb::object();
              return;
            }
            auto* obs = nb::cast<model::AttentionObserver*>(observer);
            s.session->set_observer(obs);
            s.observer = observer;
          },
          "observer"_a.none(),
          "Attaches a spillway.AttentionStats to every forward pass (None detaches); the "
          "session keeps it alive while attached.")
      .def(
          "checkpoint",
          [](const PySession& s) {
            return PyCheckpoint{s.session->checkpoint(), &s};
          },
          "A copy of the stream's state (cache, policies, position, logits); costs a copy of "
          "the KV storage.")
      .def(
          "restore",
          [](PySession& s, const PyCheckpoint& cp) {
            if (cp.owner != &s)
              throw InvalidArgument("Session.restore: the checkpoint is of another session");
            s.session->restore(*cp.cp);
          },
          "checkpoint"_a, "Returns to a checkpoint of this session.")
      .def(
          "save_state",
          [](const PySession& s) {
            const std::string b = s.session->save_state();
            return nb::bytes(b.data(), b.size());
          },
          "The stream's state as bytes (position, last logits, policy state, KV storage, a "
          "checksum), to go on in another process: load_state() into a session of the same "
          "model, policy and max_batch continues it bit for bit. Costs the KV storage's bytes.")
      .def(
          "load_state",
          [](PySession& s, nb::bytes data) {
            s.session->load_state(std::string_view(data.c_str(), data.size()), "state");
          },
          "data"_a,
          "Loads a state save_state() wrote. Raises FormatError, naming the byte and the "
          "field, for data that is truncated, damaged, of another model, policy or max_batch; "
          "the session is then reset.")
      .def(
          "save",
          [](const PySession& s, const std::filesystem::path& path) {
            s.session->save(path.string());
          },
          "path"_a, "save_state() into a file, written whole or not at all.")
      .def(
          "load",
          [](PySession& s, const std::filesystem::path& path) { s.session->load(path.string()); },
          "path"_a, "load_state() from a file (IoError when it cannot be read).")
      .def("__repr__", [](const PySession& s) {
        return fmt::format("<spillway.Session policy '{}', {} tokens, {} KV bytes>",
                           s.session->cache().describe(), s.session->n_past(),
                           s.session->storage().bytes());
      });

  nb::class_<PerplexityResult>(m, "PerplexityResult",
                               "One policy's streaming perplexity (spillway.perplexity).")
      .def_ro("spec", &PerplexityResult::spec, "The policy in words.")
      .def_ro("tokens", &PerplexityResult::tokens, "Tokens scored.")
      .def_ro("first_target", &PerplexityResult::first_target,
              "Stream index of the first scored token.")
      .def_ro("mean_nll", &PerplexityResult::mean_nll, "Mean negative log-likelihood (nats).")
      .def_ro("ppl", &PerplexityResult::ppl, "exp(mean_nll).")
      .def_ro("seconds", &PerplexityResult::seconds)
      .def_ro("tokens_per_s", &PerplexityResult::tokens_per_s, "Stream tokens per second.")
      .def_ro("kv_bytes_peak", &PerplexityResult::kv_bytes_peak)
      .def_ro("kv_slots", &PerplexityResult::kv_slots)
      .def_ro("capacity", &PerplexityResult::capacity)
      .def_prop_ro(
          "nll",
          [](nb::handle self) {
            const auto& r = nb::cast<const PerplexityResult&>(self);
            const size_t n = r.nll.size();
            return nb::ndarray<nb::numpy, const float, nb::ndim<1>>(r.nll.data(), 1, &n, self);
          },
          "Per-token NLL (float32, read-only): nll[k] = -log p(token first_target+k | the "
          "cache at the token before it).")
      .def_ro("reference", &PerplexityResult::reference_spec,
              "The reference policy of perplexity(reference=...), or ''.")
      .def_ro("kl_mean", &PerplexityResult::kl_mean,
              "Mean KL(reference || policy) of the next-token distributions, nats (NaN "
              "without a reference).")
      .def_ro("top1_agree", &PerplexityResult::top1_agree_rate,
              "Share of tokens where policy and reference put the most mass on the same token.")
      .def_ro("reference_mean_nll", &PerplexityResult::reference_mean_nll)
      .def_prop_ro(
          "kl",
          [](nb::handle self) {
            const auto& r = nb::cast<const PerplexityResult&>(self);
            const size_t n = r.kl.size();
            return nb::ndarray<nb::numpy, const float, nb::ndim<1>>(r.kl.data(), 1, &n, self);
          },
          "Per-token KL(reference || policy) (float32, read-only; empty without a reference).")
      .def("__repr__", [](const PerplexityResult& r) {
        return fmt::format(
            "<spillway.PerplexityResult '{}': ppl {:.4f} over {} tokens, {:.1f} "
            "tokens/s>",
            r.spec, r.ppl, r.tokens, r.tokens_per_s);
      });

  m.def("perplexity", &perplexity, "model"_a, "ids"_a, "policies"_a = "full", "chunk"_a = 128,
        "score_from"_a = 1, "threads"_a = 0, "progress"_a = nb::none(), "reference"_a = nb::none(),
        R"(Streaming perplexity of `ids` under each policy (the library's evaluator, the
GIL released). `policies`: one policy or a list (spec strings and/or spillway.Policy
instances). chunk: tokens per forward pass (1: per-token decode; every chunk size gives
the same NLLs). score_from: first scored stream index. progress: called as
progress(done, total) after each chunk. reference: a policy spec (e.g. "full") run in
lockstep; each result then holds kl, kl_mean and top1_agree, the divergence of its
next-token distributions from the reference's. Returns a list of PerplexityResult, one
per policy, in order.)");

  nb::class_<PyGenerator>(m, "Generator",
                          "Iterator of generated text pieces (spillway.generate); `tokens` and "
                          "`stop_reason` tell what happened.")
      .def("__iter__", [](nb::handle self) { return nb::borrow(self); })
      .def("__next__", &PyGenerator::next)
      .def_prop_ro(
          "tokens",
          [](const PyGenerator& g) {
            std::vector<TokenId> v = g.gen->tokens();
            const size_t n = v.size();
            return to_numpy(std::move(v), {n});
          },
          nb::rv_policy::automatic, "Ids generated so far (int32).")
      .def_prop_ro(
          "stop_reason",
          [](const PyGenerator& g) {
            return g.gen->done() ? std::string(stop_reason_name(g.gen->stop_reason()))
                                 : std::string();
          },
          "'length', 'eog' (end-of-generation token), 'stop' (a stop string), or '' while "
          "running.")
      .def_ro("session_obj", &PyGenerator::session_obj, "The session generating.");

  m.def(
      "_generate",
      [](nb::object session, nb::handle prompt, int64_t max_new_tokens, float temperature,
         int top_k, float top_p, float min_p, float repeat_penalty, int repeat_last_n,
         uint64_t seed, bool stop_at_eog, std::vector<std::string> stop) {
        auto g = std::make_unique<PyGenerator>();
        g->session_obj = session;
        g->s = nb::cast<PySession*>(session);
        if (nb::isinstance<nb::str>(prompt)) {
          g->prompt = g->s->model->tokenizer().encode(nb::cast<std::string>(prompt));
        } else {
          g->prompt = token_ids(prompt, g->s->model->config().n_vocab, "generate");
        }
        SamplerParams sp;
        sp.temperature = temperature;
        sp.top_k = top_k;
        sp.top_p = top_p;
        sp.min_p = min_p;
        sp.repeat_penalty = repeat_penalty;
        sp.repeat_last_n = repeat_last_n;
        sp.seed = seed;
        GenerateOptions go;
        go.max_new_tokens = max_new_tokens;
        go.stop_at_eog = stop_at_eog;
        go.stop = std::move(stop);
        g->gen = std::make_unique<Generator>(*g->s->session, sp, std::move(go));
        return g;
      },
      "session"_a, "prompt"_a, "max_new_tokens"_a, "temperature"_a, "top_k"_a, "top_p"_a, "min_p"_a,
      "repeat_penalty"_a, "repeat_last_n"_a, "seed"_a, "stop_at_eog"_a, "stop"_a);

  bind_analysis(m);
}
