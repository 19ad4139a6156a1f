// KV-cache policies written in Python: a kv::Policy that forwards every question to a
// spillway.Policy instance (python/spillway/_policy.py), and the PlanBuilder through which
// its plan() fills the BatchPlan. The C++ contract of kv/policy.h holds unchanged; the
// model validates the plans as it validates any policy's.
#include <fmt/core.h>
#include <nanobind/stl/string.h>

#include <optional>

#include "common.h"
#include "spillway/core/error.h"

namespace spillway::python {

namespace {

// A Python reference that may be copied and dropped without the GIL (std::function copies
// of a factory happen inside the library, with the GIL released).
class SharedRef {
 public:
  explicit SharedRef(nb::object obj)
      : ref_(new nb::object(std::move(obj)), [](nb::object* p) {
          nb::gil_scoped_acquire gil;
          delete p;
        }) {}
  const nb::object& get() const { return *ref_; }

 private:
  std::shared_ptr<nb::object> ref_;
};

nb::object deepcopy(const nb::object& obj) {
  return nb::module_::import_("copy").attr("deepcopy")(obj);
}

// What a Python policy's plan() writes into: the C++ plan of one plan() call. Valid only
// during that call (`out` is cleared when it returns; a builder kept past it raises).
struct PlanBuilder {
  kv::BatchPlan* out = nullptr;
  int64_t n0 = 0;
  int64_t count = 0;
  int64_t added = 0;
  std::string policy;  // spec, for messages

  kv::BatchPlan& plan() {
    if (!out)
      throw InvalidArgument(fmt::format(
          "policy '{}': the PlanBuilder is used after its plan() call returned", policy));
    return *out;
  }
};

int64_t to_i64(nb::handle h, const char* what, const std::string& policy) {
  try {
    return nb::cast<int64_t>(h);
  } catch (const nb::cast_error&) {
    throw InvalidArgument(
        fmt::format("policy '{}': {} must be an integer, got {}", policy, what, py_str(h.type())));
  }
}

int32_t to_slot(nb::handle h, const char* what, const std::string& policy) {
  const int64_t v = to_i64(h, what, policy);
  if (v < 0 || v > INT32_MAX)
    throw InvalidArgument(fmt::format("policy '{}': {} {} outside [0, 2^31)", policy, what, v));
  return static_cast<int32_t>(v);
}

void add_token(PlanBuilder& b, int64_t write_slot, int64_t key_pos, nb::handle ranges,
               bool virtual_sink) {
  kv::BatchPlan& out = b.plan();
  if (b.added >= b.count)
    throw InvalidArgument(fmt::format("policy '{}': plan({}, {}) adds more than {} token(s)",
                                      b.policy, b.n0, b.count, b.count));
  if (write_slot < 0 || write_slot > INT32_MAX)
    throw InvalidArgument(
        fmt::format("policy '{}': write_slot {} outside [0, 2^31)", b.policy, write_slot));
  kv::TokenPlan t;
  t.stream_index = b.n0 + b.added;
  t.write_slot = static_cast<int32_t>(write_slot);
  t.key_pos = key_pos;
  t.virtual_sink = virtual_sink;
  t.range_begin = static_cast<int32_t>(out.ranges.size());
  for (nb::handle r : ranges) {
    const size_t n = nb::len(r);
    if (n != 3 && n != 4)
      throw InvalidArgument(fmt::format(
          "policy '{}': a range of token {} has {} fields; expected (begin, end, query_pos) or "
          "(begin, end, query_pos, sink)",
          b.policy, t.stream_index, n));
    kv::SlotRange sr;
    sr.begin = to_slot(r[0], "range begin", b.policy);
    sr.end = to_slot(r[1], "range end", b.policy);
    sr.query_pos = to_i64(r[2], "range query_pos", b.policy);
    sr.sink = n == 4 && nb::cast<bool>(r[3]);
    if (sr.end < sr.begin)
      throw InvalidArgument(
          fmt::format("policy '{}': range [{}, {}) of token {} ends before it begins", b.policy,
                      sr.begin, sr.end, t.stream_index));
    out.ranges.push_back(sr);
  }
  t.range_end = static_cast<int32_t>(out.ranges.size());
  out.tokens.push_back(t);
  ++b.added;
}

// The kv::Policy that asks a Python object. Every call takes the GIL: the library calls a
// policy from the thread that feeds the session, with the GIL released around the pass.
class PythonPolicy final : public kv::Policy {
 public:
  // GIL held by the caller.
  PythonPolicy(nb::object obj, const kv::PolicyLimits& limits)
      : Policy(kv::PolicyOptions{}, limits), obj_(std::move(obj)) {
    wants_attention_ = nb::cast<bool>(obj_.attr("wants_attention")());
  }
  PythonPolicy(const PythonPolicy& o) : Policy(o), wants_attention_(o.wants_attention_) {
    nb::gil_scoped_acquire gil;
    obj_ = deepcopy(o.obj_);
  }
  ~PythonPolicy() override {
    nb::gil_scoped_acquire gil;
    obj_ = nb::object();
  }

  const nb::object& object() const { return obj_; }

  std::string spec() const override {
    nb::gil_scoped_acquire gil;
    return py_str(obj_.attr("spec")());
  }
  int64_t n_slots() const override {
    nb::gil_scoped_acquire gil;
    return to_i64(obj_.attr("n_slots")(), "n_slots()", spec_unlocked());
  }
  std::optional<int64_t> capacity() const override {
    nb::gil_scoped_acquire gil;
    nb::object c = obj_.attr("capacity")();
    if (c.is_none()) return std::nullopt;
    return to_i64(c, "capacity()", spec_unlocked());
  }
  int64_t n_sinks() const override {
    nb::gil_scoped_acquire gil;
    return to_i64(obj_.attr("n_sinks")(), "n_sinks()", spec_unlocked());
  }
  bool wants_attention() const override { return wants_attention_; }

  void observe(const kv::AttentionFeedback& f) override {
    nb::gil_scoped_acquire gil;
    const int64_t H = f.n_head;
    nb::list probs;
    for (int64_t t = 0; t < f.n_tokens; ++t) {
      const float* p = f.probs + f.offset[t];
      const size_t span = static_cast<size_t>((f.offset[t + 1] - f.offset[t]) / H);
      probs.append(to_numpy(std::vector<float>(p, p + H * static_cast<int64_t>(span)),
                            {static_cast<size_t>(H), span}));
    }
    auto lse = to_numpy(std::vector<double>(f.lse, f.lse + f.n_tokens * H),
                        {static_cast<size_t>(f.n_tokens), static_cast<size_t>(H)});
    obj_.attr("observe")(f.layer, probs, lse);
  }

  std::vector<int64_t> slot_contents() const override {
    nb::gil_scoped_acquire gil;
    std::vector<int64_t> out;
    for (nb::handle h : obj_.attr("slot_contents")()) out.push_back(nb::cast<int64_t>(h));
    return out;
  }

  std::unique_ptr<kv::Policy> clone() const override {
    return std::make_unique<PythonPolicy>(*this);
  }

 protected:
  void plan_tokens(int64_t n0, int64_t count, kv::BatchPlan& out) override {
    nb::gil_scoped_acquire gil;
    PlanBuilder init;
    init.out = &out;
    init.n0 = n0;
    init.count = count;
    init.policy = spec_unlocked();
    nb::object builder = nb::cast(std::move(init));
    PlanBuilder& b = nb::cast<PlanBuilder&>(builder);
    struct Invalidate {
      PlanBuilder& b;
      ~Invalidate() { b.out = nullptr; }
    } invalidate{b};
    obj_.attr("plan")(n0, count, builder);
    if (b.added != count)
      throw InvalidArgument(fmt::format("policy '{}': plan({}, {}) added {} token(s), expected {}",
                                        b.policy, n0, count, b.added, count));
  }
  void on_reset() override {
    nb::gil_scoped_acquire gil;
    obj_.attr("reset")();
  }

 private:
  // spec() with the GIL already held.
  std::string spec_unlocked() const { return py_str(obj_.attr("spec")()); }

  nb::object obj_;  // the spillway.Policy instance this cache plans with (its own copy)
  bool wants_attention_ = false;
};

}  // namespace

PolicyChoice policy_choice(nb::handle policy, const std::string& cache_options) {
  PolicyChoice c;
  if (nb::isinstance<nb::str>(policy)) {
    if (!cache_options.empty())
      throw InvalidArgument(
          "cache_options is for Python policies; put kv= and local= in the spec string");
    c.spec = kv::PolicySpec(nb::cast<std::string>(policy));
    return c;
  }
  nb::object base = nb::module_::import_("spillway").attr("Policy");
  if (!nb::isinstance(policy, base))
    throw nb::type_error(
        fmt::format("policy must be a spec string (e.g. 'sink:4+1020') or a spillway.Policy "
                    "instance, got {}",
                    py_str(policy.type()))
            .c_str());
  c.spec = kv::PolicySpec(cache_options.empty() ? std::string("full") : "full," + cache_options);
  if (c.spec.kind() != "full" || !c.spec.options().kind_options.empty() ||
      c.spec.options().positions != kv::PositionMode::kCache)
    throw InvalidArgument(fmt::format(
        "cache_options '{}': only kv=f32|f16 and local=native|policy apply to a Python policy",
        cache_options));
  // Each cache plans with its own deep copy of the instance, set up for its limits.
  SharedRef proto(nb::borrow(policy));
  c.factory = [proto](const kv::PolicyLimits& limits) -> std::unique_ptr<kv::Policy> {
    nb::gil_scoped_acquire gil;
    nb::object copy = deepcopy(proto.get());
    copy.attr("setup")(limits.max_batch, limits.max_stream);
    return std::make_unique<PythonPolicy>(std::move(copy), limits);
  };
  return c;
}

nb::object python_policy_object(const kv::Policy& policy) {
  if (const auto* p = dynamic_cast<const PythonPolicy*>(&policy)) return p->object();
  return nb::none();
}

PyObject* python_policy_ptr(const kv::Policy& policy) {
  if (const auto* p = dynamic_cast<const PythonPolicy*>(&policy)) return p->object().ptr();
  return nullptr;
}

void bind_policy(nb::module_& m) {
  nb::class_<PlanBuilder>(m, "PlanBuilder",
                          "What a Python policy's plan(n0, count, out) fills: one add() per "
                          "stream token n0 .. n0+count-1, in order. Valid only during that call.")
      .def_ro("n0", &PlanBuilder::n0, "Stream index of the first token of this plan() call.")
      .def_ro("count", &PlanBuilder::count, "Tokens this plan() call must add.")
      .def_ro("added", &PlanBuilder::added, "Tokens added so far.")
      .def("add", &add_token, nb::arg("write_slot"), nb::arg("key_pos"), nb::arg("ranges"),
           nb::arg("virtual_sink") = false,
           "Plans the next token (stream index n0 + added): its K/V go to slot `write_slot`, "
           "its key is rotated at position `key_pos`, and its query attends to `ranges`, a "
           "sequence of (begin, end, query_pos) or (begin, end, query_pos, sink) tuples: slots "
           "[begin, end) scored with the query rotated at query_pos; sink=True marks a run kept "
           "as attention sinks (analyses may drop it). The ranges may include the token's own "
           "slot and slots written earlier in the same call.")
      .def(
          "move",
          [](PlanBuilder& b, int64_t from, int64_t to) {
            kv::BatchPlan& out = b.plan();
            if (from < 0 || to < 0 || from > INT32_MAX || to > INT32_MAX)
              throw InvalidArgument(
                  fmt::format("policy '{}': move({}, {}) outside [0, 2^31)", b.policy, from, to));
            out.moves.push_back({static_cast<int32_t>(from), static_cast<int32_t>(to)});
          },
          nb::arg("from_slot"), nb::arg("to_slot"),
          "Before this step's tokens are stored, copy the K/V of slot `from_slot` to "
          "`to_slot` (every layer the policy governs; a copy, not a re-rotation).");
}

}  // namespace spillway::python
