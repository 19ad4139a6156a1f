// The policy registry: adding a policy is one new file plus one line here.
#include "policies.h"

namespace spillway::kv {

const std::vector<PolicyKind>& policy_kinds() {
  static const std::vector<PolicyKind> kinds = {
      {"full", "full", "every token kept; the cache grows", make_full_policy},
      {"window", "window:W", "the last W tokens", make_window_policy},
      {"sink",
       "sink:S+W",
       "the first S tokens plus the last W; evict=turn: the conversation's start plus the "
       "latest whole chat turns",
       make_sink_policy,
       {"evict"}},
      {"recompute", "recompute:W", "the last W tokens re-encoded from scratch per token",
       make_recompute_policy},
      {"detected",
       "detected:S+W",
       "the S tokens that received the most attention plus the last W",
       make_detected_policy,
       {"pick"}},
      {"nullsink",
       "nullsink:W",
       "the last W tokens plus a virtual sink per head: a logit, calibrated on the first "
       "tokens, or a logit and value fitted to the real sink (fit=FILE)",
       make_nullsink_policy,
       {"calib", "fit"}},
      {"h2o", "h2o:H+W", "the H tokens with the most accumulated attention plus the last W",
       make_h2o_policy},
      {"tova", "tova:C", "C tokens; a new one evicts the least attended by the latest query",
       make_tova_policy},
  };
  return kinds;
}

}  // namespace spillway::kv
