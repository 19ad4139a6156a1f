// Shared pieces of the Python module spillway._spillway: the model handle that Python
// objects share, numpy conversions, and the entry points of the other binding files.
//
// GIL contract: every forward pass (Session.feed, perplexity, generation, analyses) runs
// with the GIL released; whatever calls back into Python (a Python policy, a progress
// callback) takes it again for the call.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "spillway/kv/cache.h"
#include "spillway/model/model.h"

namespace spillway::python {

namespace nb = nanobind;

// A loaded model. Sessions, tokenizers and results hold the shared pointer, so the model
// lives as long as any of them.
struct PyModel {
  std::shared_ptr<const model::Model> model;
  std::string path;
};

// A numpy array that owns `values` (moved into it), with the given shape (C order; the
// product of `shape` equals values.size()).
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> values, std::vector<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner);
}

// str(obj) as Python computes it.
inline std::string py_str(nb::handle obj) {
  PyObject* s = PyObject_Str(obj.ptr());
  if (!s) throw nb::python_error();
  return nb::cast<std::string>(nb::steal<nb::str>(s));
}

// Token ids from any 1-D sequence of integers (list, numpy array of any integer type).
// Throws InvalidArgument naming `what` for a non-integer or multi-dimensional input and for
// an id outside [0, n_vocab) (with its index), so that nothing is silently truncated.
std::vector<TokenId> token_ids(nb::handle ids, int64_t n_vocab, const char* what);

// A policy argument: a spec string ("sink:4+1020,kv=f16") or a spillway.Policy instance
// (written in Python). For a Python policy the spec is `cache_options` after "full"
// (kv= and local= only) and the factory makes the policy.
struct PolicyChoice {
  kv::PolicySpec spec;
  kv::Cache::PolicyFactory factory;  // empty for a spec string
};
PolicyChoice policy_choice(nb::handle policy, const std::string& cache_options);

// The Python object behind a policy made by a PolicyChoice factory, or None.
nb::object python_policy_object(const kv::Policy& policy);
// The same as a borrowed pointer (nullptr for a C++ policy), for garbage-collector
// traversal.
PyObject* python_policy_ptr(const kv::Policy& policy);

void bind_policy(nb::module_& m);    // policy.cpp: spillway.PlanBuilder
void bind_analysis(nb::module_& m);  // analysis.cpp: attention statistics, sink analyses

}  // namespace spillway::python
