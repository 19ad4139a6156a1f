#include "spillway/analysis/recall.h"

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>

#include "spillway/core/error.h"
#include "spillway/session/chat.h"
#include "spillway/session/generate.h"
#include "spillway/session/perplexity.h"
#include "spillway/session/session.h"

namespace spillway::analysis {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

size_t at(int64_t i) {
  return static_cast<size_t>(i);
}

void append(std::vector<TokenId>& out, std::span<const TokenId> ids) {
  out.insert(out.end(), ids.begin(), ids.end());
}

// How a question is put to the model: inside its chat template when it has one (the
// probe's text is then the user's message), else as plain text that the answer completes.
class Asker {
 public:
  explicit Asker(const model::Model& m) : tok_(m.tokenizer()) {
    if (const auto t = m.chat_template(); t && !t->empty()) {
      try {
        format_ = std::make_unique<ChatFormat>(*t);
      } catch (const Error&) {
        format_.reset();  // a template of an unknown family: ask as plain text
      }
    }
  }
  bool chat() const { return format_ != nullptr; }

  // The stream's opening: the template's start and the user's prefix (chat), or BOS when
  // the tokenizer asks for one (plain).
  std::vector<TokenId> opening() const {
    std::vector<TokenId> out;
    if (chat()) {
      out = special(format_->start() + format_->user_prefix(true));
      if (tok_.add_bos() && tok_.bos() && (out.empty() || out.front() != *tok_.bos()))
        out.insert(out.begin(), *tok_.bos());
    } else if (tok_.add_bos() && tok_.bos()) {
      out.push_back(*tok_.bos());
    }
    return out;
  }
  // The question and what follows it up to where the answer begins. A chat model's turn
  // is opened with the first words of the answer too (`lead_in`), so that its greedy
  // continuation is the number and not a rephrasing; a plain prompt ends with them.
  std::vector<TokenId> question(const std::string& chat_text, const std::string& plain_text,
                                const std::string& lead_in) const {
    if (!chat()) return text(plain_text + lead_in);
    std::vector<TokenId> out = text(chat_text);
    append(out, special(format_->user_suffix() + format_->assistant_header()));
    append(out, text(lead_in.substr(lead_in.starts_with(' ') ? 1 : 0)));
    return out;
  }
  // Ordinary text (no control tokens recognized, no BOS).
  std::vector<TokenId> text(const std::string& s) const {
    EncodeOptions o;
    o.add_bos = false;
    return s.empty() ? std::vector<TokenId>{} : tok_.encode(s, o);
  }

 private:
  std::vector<TokenId> special(const std::string& s) const {
    EncodeOptions o;
    o.add_bos = false;
    o.parse_special = true;
    return s.empty() ? std::vector<TokenId>{} : tok_.encode(s, o);
  }

  const Tokenizer& tok_;
  std::unique_ptr<ChatFormat> format_;
};

// A uniform draw in [0, 1) and an integer in [lo, hi] from the probe's generator.
double uniform(std::mt19937_64& rng) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}
int64_t integer(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// Where the probe's filler starts: the same fraction of the room for every distance.
int64_t filler_offset(double u, int64_t filler, int64_t need) {
  const int64_t room = filler - need;
  return std::min<int64_t>(room, static_cast<int64_t>(u * static_cast<double>(room + 1)));
}

}  // namespace

const char* probe_kind_name(ProbeKind k) {
  switch (k) {
    case ProbeKind::kPasskey:
      return "passkey";
    case ProbeKind::kLines:
      return "lines";
    case ProbeKind::kCopy:
      break;
  }
  return "copy";
}

std::optional<ProbeKind> parse_probe_kind(std::string_view name) {
  for (ProbeKind k : {ProbeKind::kCopy, ProbeKind::kPasskey, ProbeKind::kLines})
    if (name == probe_kind_name(k)) return k;
  return std::nullopt;
}

std::string answer_line(std::string_view text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return std::string(text);
  const size_t end = text.find('\n', begin);
  return std::string(text.substr(0, end));
}

bool answer_matches(std::string_view text, std::string_view answer) {
  size_t i = 0;
  while (i < text.size() && (text[i] < '0' || text[i] > '9')) ++i;
  size_t j = i;
  while (j < text.size() && text[j] >= '0' && text[j] <= '9') ++j;
  return j > i && text.substr(i, j - i) == answer;
}

Probe make_probe(const model::Model& model, std::span<const TokenId> filler,
                 const ProbeOptions& o) {
  if (o.distance < 0 || o.lead < 0)
    throw InvalidArgument(
        fmt::format("probe: distance {} and lead {} must be >= 0", o.distance, o.lead));
  if (o.kind == ProbeKind::kCopy && o.span < 2)
    throw InvalidArgument(fmt::format("probe: the copy span must be >= 2 tokens, got {}", o.span));
  const auto n_filler = static_cast<int64_t>(filler.size());
  if (o.reach != 0 && o.reach < o.distance)
    throw InvalidArgument(
        fmt::format("probe: reach {} is below the distance {}", o.reach, o.distance));
  const int64_t reach = o.reach != 0 ? o.reach : o.distance;
  const int64_t need = o.lead + (o.kind == ProbeKind::kLines ? 0 : reach);
  if (n_filler < need)
    throw InvalidArgument(
        fmt::format("probe: the filler has {} tokens; a {} probe at distance {} needs {}", n_filler,
                    probe_kind_name(o.kind), reach, need));
  std::mt19937_64 rng(0x5eed0000ull + o.seed);
  const double u = uniform(rng);
  const int64_t off = filler_offset(u, n_filler, need);
  auto fill = [&](int64_t from, int64_t count) {
    return filler.subspan(at(off + from), at(count));
  };
  const Tokenizer& tok = model.tokenizer();
  Probe p;

  if (o.kind == ProbeKind::kCopy) {
    if (tok.add_bos() && tok.bos()) p.tokens.push_back(*tok.bos());
    // L ordinary tokens, drawn uniformly from the vocabulary.
    std::vector<TokenId> span;
    while (static_cast<int64_t>(span.size()) < o.span) {
      const auto t = static_cast<TokenId>(integer(rng, 0, tok.vocab_size() - 1));
      if (tok.token_type(t) == TokenType::Normal) span.push_back(t);
    }
    append(p.tokens, fill(0, o.lead));
    p.first_begin = static_cast<int64_t>(p.tokens.size());
    append(p.tokens, span);
    p.first_end = static_cast<int64_t>(p.tokens.size());
    append(p.tokens, fill(o.lead, o.distance));
    p.repeat_begin = static_cast<int64_t>(p.tokens.size());
    append(p.tokens, span);
    p.repeat_end = static_cast<int64_t>(p.tokens.size());
    return p;
  }

  const Asker ask(model);
  p.tokens = ask.opening();
  append(p.tokens, fill(0, o.lead));
  p.max_answer_tokens = 12;
  if (o.kind == ProbeKind::kPasskey) {
    p.answer = std::to_string(integer(rng, 10000, 99999));
    append(p.tokens, ask.text(fmt::format(" The pass key is {0}. Remember it. {0} is the pass key.",
                                          p.answer)));
    append(p.tokens, fill(o.lead, o.distance));
    append(p.tokens, ask.question(" What is the pass key? Answer with the number only.",
                                  " What is the pass key?", " The pass key is"));
    return p;
  }

  // Lines: a few before the one asked about, then as many after it as reach the distance.
  const int64_t target = integer(rng, 2, 6);
  std::string value;
  int64_t target_end = 0;  // stream index after the line asked about
  for (int64_t k = 0;; ++k) {
    const std::string v = std::to_string(integer(rng, 1000, 9999));
    if (k == target) value = v;
    append(p.tokens, ask.text(fmt::format("line {}: REGISTER_CONTENT is <{}>\n", k, v)));
    if (k == target) target_end = static_cast<int64_t>(p.tokens.size());
    if (k >= target && static_cast<int64_t>(p.tokens.size()) - target_end >= o.distance) break;
  }
  p.answer = value;
  append(p.tokens,
         ask.question(fmt::format("What is the REGISTER_CONTENT in line {}? Answer with the "
                                  "number only.",
                                  target),
                      fmt::format("What is the REGISTER_CONTENT in line {}?\n", target),
                      fmt::format("The REGISTER_CONTENT in line {} is <", target)));
  return p;
}

std::vector<RecallRow> measure_recall(const model::Model& model, std::span<const TokenId> filler,
                                      const RecallOptions& opts, ThreadPool* pool) {
  if (opts.policies.empty()) throw InvalidArgument("recall: no policies");
  if (opts.distances.empty()) throw InvalidArgument("recall: no distances");
  if (opts.seeds < 1) throw InvalidArgument("recall: seeds must be >= 1");
  if (opts.chunk < 1) throw InvalidArgument("recall: chunk must be >= 1");
  for (int64_t d : opts.distances)
    if (d < 0) throw InvalidArgument(fmt::format("recall: distance {} < 0", d));
  // Every probe is made (and checked) before the long work starts.
  const int64_t reach = *std::max_element(opts.distances.begin(), opts.distances.end());
  std::vector<std::vector<Probe>> probes;  // [distance][seed]
  for (int64_t d : opts.distances) {
    probes.emplace_back();
    for (int64_t seed = 0; seed < opts.seeds; ++seed) {
      ProbeOptions po;
      po.kind = opts.kind;
      po.distance = d;
      po.reach = reach;
      po.seed = static_cast<uint64_t>(seed);
      po.span = opts.span;
      po.lead = opts.lead;
      probes.back().push_back(make_probe(model, filler, po));
    }
  }
  // Distances in ascending order: a seed's stream is walked once, from the smallest.
  std::vector<size_t> order(opts.distances.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return opts.distances[a] < opts.distances[b]; });
  std::unique_ptr<ThreadPool> own;
  if (pool == nullptr) {
    own = std::make_unique<ThreadPool>(opts.threads);
    pool = own.get();
  }
  const bool copy = opts.kind == ProbeKind::kCopy;
  const int64_t n_vocab = model.config().n_vocab;
  const int64_t total =
      static_cast<int64_t>(opts.policies.size() * opts.distances.size()) * opts.seeds;
  int64_t done = 0;
  std::vector<RecallRow> rows;
  for (const kv::PolicySpec& spec : opts.policies) {
    const size_t nd = opts.distances.size();
    std::vector<RecallRow> cells(nd);
    std::vector<double> first_sum(nd, 0.0), repeat_sum(nd, 0.0);
    std::vector<int64_t> correct(nd, 0);
    for (size_t di = 0; di < nd; ++di) {
      cells[di].kind = opts.kind;
      cells[di].distance = opts.distances[di];
    }
    for (int64_t seed = 0; seed < opts.seeds; ++seed) {
      const auto si = static_cast<size_t>(seed);
      const Probe& longest = probes[order.back()][si];
      SessionOptions so;
      so.policy = spec;
      so.max_batch = opts.chunk;
      so.max_stream = static_cast<int64_t>(longest.tokens.size()) + longest.max_answer_tokens;
      Session s(model, so, pool);
      // The trunk is the longest probe's stream; `fed` of its tokens are in the session.
      int64_t fed = 0;
      double first = 0;
      auto advance_to = [&](const std::vector<TokenId>& tokens, int64_t to) {
        s.advance(std::span<const TokenId>(tokens).subspan(at(fed), at(to - fed)));
        fed = to;
      };
      // Mean NLL of a span's targets (its tokens but the first), the span fed from its start;
      // logits only where they are scored.
      auto span_nll = [&](const std::vector<TokenId>& tokens, int64_t begin, int64_t end) {
        advance_to(tokens, begin);
        double sum = 0;
        s.feed(std::span<const TokenId>(tokens).subspan(at(begin), at(end - 1 - begin)),
               [&](int64_t i, const float* l) {
                 sum += token_nll(l, n_vocab, tokens[at(i + 1)]);
                 return true;
               });
        fed = end - 1;
        return sum / static_cast<double>(end - 1 - begin);
      };
      if (copy) first = span_nll(longest.tokens, longest.first_begin, longest.first_end);
      for (size_t k = 0; k < order.size(); ++k) {
        const size_t di = order[k];
        const Probe& p = probes[di][si];
        RecallRow& row = cells[di];
        const auto t0 = std::chrono::steady_clock::now();
        // Where this probe leaves the trunk: at the latest where its recall begins.
        const int64_t recall_at = copy ? p.repeat_begin : static_cast<int64_t>(p.tokens.size()) - 1;
        const auto shared =
            static_cast<int64_t>(std::mismatch(p.tokens.begin(), p.tokens.end(),
                                               longest.tokens.begin(), longest.tokens.end())
                                     .first -
                                 p.tokens.begin());
        const int64_t split = std::min(shared, recall_at);
        if (split < fed || (copy && p.first_end > split))
          throw std::logic_error("recall: a probe leaves its seed's stream before its recall");
        advance_to(longest.tokens, split);
        const bool last = k + 1 == order.size();
        std::shared_ptr<const Session::Checkpoint> cp;
        if (!last) cp = s.checkpoint();
        const int64_t at_split = fed;
        if (copy) {
          const double repeat = span_nll(p.tokens, p.repeat_begin, p.repeat_end);
          first_sum[di] += first;
          repeat_sum[di] += repeat;
          row.recall_seeds.push_back(1.0 - repeat / first);
        } else {
          GenerateOptions go;
          go.max_new_tokens = p.max_answer_tokens;
          SamplerParams greedy;
          Generator gen(s, greedy, go);
          advance_to(p.tokens, recall_at);  // the prompt; logits only after its last token
          gen.feed(std::span<const TokenId>(p.tokens).last(1));
          // The answer is its first line; a base model may open with a line break.
          std::string answer;
          while (gen.next()) {
            answer = answer_line(gen.text());
            if (answer.size() < gen.text().size()) break;
          }
          row.answers.push_back(answer);
          row.expected.push_back(p.answer);
          correct[di] += answer_matches(answer, p.answer) ? 1 : 0;
        }
        row.spec = s.cache().describe();
        row.capacity = s.cache().capacity();
        row.kv_slots = s.policy().n_slots();
        row.kv_bytes_peak = std::max(row.kv_bytes_peak, s.kv_bytes_peak());
        if (cp) {
          s.restore(*cp);
          fed = at_split;
        }
        ++row.n;
        row.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (opts.progress) opts.progress(++done, total);
      }
    }
    for (size_t di = 0; di < nd; ++di) {
      RecallRow& row = cells[di];
      if (copy) {
        row.nll_first = first_sum[di] / static_cast<double>(row.n);
        row.nll_repeat = repeat_sum[di] / static_cast<double>(row.n);
        row.recall = 1.0 - row.nll_repeat / row.nll_first;
        row.accuracy = kNaN;
      } else {
        row.nll_first = row.nll_repeat = row.recall = kNaN;
        row.accuracy = static_cast<double>(correct[di]) / static_cast<double>(row.n);
      }
      rows.push_back(std::move(row));
    }
  }
  return rows;
}

std::optional<int64_t> effective_context(std::span<const RecallRow> rows, double threshold) {
  std::optional<int64_t> from;
  for (const RecallRow& r : rows) {
    const double v = r.kind == ProbeKind::kCopy ? r.recall : r.accuracy;
    if (!(v < threshold))
      from.reset();
    else if (!from)
      from = r.distance;
  }
  return from;
}

}  // namespace spillway::analysis
