// spillway serve: an HTTP server with OpenAI-compatible endpoints (/v1/chat/completions,
// /v1/completions, /v1/models) plus /health and /metrics, conversations with a policy of
// their own and their live cache view (/v1/conversations...), and a web page at / that
// uses them (web/, compiled in: web_assets.h). Request parsing and the JSON shapes live in
// serve/api.h, the decode thread that batches every request in the library's
// spillway/serve/scheduler.h; this file binds them to HTTP. docs/serve.md describes it.
#include <fmt/core.h>
#include <httplib.h>
#include <pthread.h>

#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "command.h"
#include "serve/api.h"
#include "spillway/core/build_info.h"
#include "spillway/core/error.h"
#include "spillway/core/process.h"
#include "spillway/model/model.h"
#include "spillway/serve/scheduler.h"
#include "spillway/session/generate.h"
#include "web_assets.h"

namespace spillway::cli {
namespace {

using nlohmann::json;
using serve::ApiError;
using serve::Endpoint;
using serve::Event;

struct ServeCliOptions {
  std::string model = kDefaultModel;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string policy = "sink:4+1020";
  std::string api_key;
  std::string alias = "spillway";
  int threads = 0;
  int64_t max_sessions = 32;
  uint64_t kv_budget = 1ull << 30;
  int64_t max_active = 16;
  int64_t max_prompt_bytes = 1 << 20;
  int64_t max_tokens_limit = 4096;
  int64_t default_max_tokens = 256;
  int64_t max_cache = 4096;
  double watch_ttl = 30.0;
  int64_t max_connections = 0;  // 0: 2 * max_active + 8, at least 16
  double read_timeout = 10.0;
  double write_timeout = 10.0;
  double idle_timeout = 120.0;
  bool web = true;
  double shutdown_grace = 10.0;
};

// Set on the HTTP worker that serves a connection taken beyond --max-connections: its
// requests are answered 503 with Retry-After.
thread_local bool t_over_capacity = false;

// The HTTP server's task queue: one task per connection (a keep-alive connection holds its
// task while it waits for the next request). Beyond `cap` connections at once a
// connection still gets a worker (there are `reserve` more), but only to be told 503.
class CappedQueue final : public httplib::TaskQueue {
 public:
  CappedQueue(size_t cap, size_t reserve) : cap_(cap), pool_(cap + reserve) {}
  void enqueue(std::function<void()> fn) override {
    const bool over = active_.fetch_add(1) >= cap_;
    pool_.enqueue([this, fn = std::move(fn), over] {
      t_over_capacity = over;
      fn();
      t_over_capacity = false;
      active_.fetch_sub(1);
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  size_t cap_;
  std::atomic<size_t> active_{0};
  httplib::ThreadPool pool_;
};

bool starts_with_ci(const std::string& s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

class Server {
 public:
  Server(const ServeCliOptions& o, std::unique_ptr<model::Model> model,
         const serve::SchedulerOptions& so)
      : o_(o),
        model_(std::move(model)),
        scheduler_(*model_, so),
        model_id_(std::filesystem::path(o.model).stem().string()),
        created_(std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count()),
        rng_(std::random_device{}()) {
    limits_.model_names = {model_id_, std::filesystem::path(o.model).filename().string()};
    if (!o.alias.empty()) limits_.model_names.push_back(o.alias);
    limits_.max_prompt_bytes = o.max_prompt_bytes;
    limits_.max_tokens_limit = o.max_tokens_limit;
    limits_.default_max_tokens = o.default_max_tokens;
    limits_.max_cache = o.max_cache;
    chat_template_ = model_->chat_template();
    routes();
  }

  httplib::Server& http() { return http_; }
  serve::Scheduler& scheduler() { return scheduler_; }

 private:
  void send_error(httplib::Response& res, int status, const std::string& message,
                  const std::string& type, const std::string& code) {
    ++errors_;
    res.status = status;
    if (status == 503 && !res.has_header("Retry-After")) res.set_header("Retry-After", "5");
    res.set_content(serve::dump_json(serve::error_json(message, type, code)), "application/json");
  }

  void routes() {
    const auto cap = static_cast<size_t>(o_.max_connections);
    http_.new_task_queue = [cap] { return new CappedQueue(cap, 8); };
    http_.set_read_timeout(std::chrono::milliseconds(static_cast<int64_t>(o_.read_timeout * 1000)));
    http_.set_write_timeout(
        std::chrono::milliseconds(static_cast<int64_t>(o_.write_timeout * 1000)));
    // Bodies a little over the prompt limit still reach the parser, which answers 413
    // with the prompt's size; far larger ones are cut off by the library (413 as well).
    http_.set_payload_max_length(static_cast<size_t>(o_.max_prompt_bytes) * 2 + (64 << 10));
    http_.set_keep_alive_timeout(2);
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      ++requests_;
      if (t_over_capacity) {
        res.set_header("Retry-After", "1");
        res.set_header("Connection", "close");
        send_error(res, 503,
                   fmt::format("the server has {} connections open, its limit "
                               "(--max-connections); retry shortly",
                               o_.max_connections),
                   "server_error", "overloaded");
        return httplib::Server::HandlerResponse::Handled;
      }
      // The page's files hold nothing secret: the page asks for the key itself.
      if (o_.api_key.empty() || req.path == "/health" || is_web_asset(req))
        return httplib::Server::HandlerResponse::Unhandled;
      const std::string auth = req.get_header_value("Authorization");
      if (auth != "Bearer " + o_.api_key) {
        send_error(
            res, 401,
            auth.empty() ? "missing API key (Authorization: Bearer KEY)" : "incorrect API key",
            "invalid_request_error", "invalid_api_key");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Errors the library produces itself (no route, body too large) get the JSON shape.
    http_.set_error_handler(httplib::Server::HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          if (res.status == 404)
            send_error(res, 404, fmt::format("no route for {} {}", req.method, req.path),
                       "invalid_request_error", "not_found");
          else if (res.status == 413)
            send_error(res, 413, "the request body is too large", "invalid_request_error",
                       "payload_too_large");
          else
            send_error(res, res.status, fmt::format("HTTP error {}", res.status),
                       "invalid_request_error", "http_error");
          return httplib::Server::HandlerResponse::Handled;
        }));
    http_.set_exception_handler(
        [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "internal error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          send_error(res, 500, what, "server_error", "internal_error");
        });
    if (o_.web) {
      for (const WebAsset& a : web_assets()) {
        auto serve_asset = [&a](const httplib::Request&, httplib::Response& res) {
          res.set_content(a.body.data(), a.body.size(), std::string(a.content_type).c_str());
          res.set_header("Cache-Control", "no-cache");
          res.set_header("X-Content-Type-Options", "nosniff");
          // The page runs only its own script and talks only to this server.
          res.set_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                         "base-uri 'none'; frame-ancestors 'none'");
        };
        http_.Get(std::string(a.path), serve_asset);
        if (a.path == "/") http_.Get("/index.html", serve_asset);
      }
    }
    http_.Get("/v1/info", [this](const httplib::Request&, httplib::Response& res) { info(res); });
    http_.Post("/v1/conversations", [this](const httplib::Request& req, httplib::Response& res) {
      open_conversation(req, res);
    });
    http_.Get(
        R"(/v1/conversations/([^/]+)/cache)",
        [this](const httplib::Request& req, httplib::Response& res) { cache_view(req, res); });
    http_.Get(
        R"(/v1/conversations/([^/]+)/cache/events)",
        [this](const httplib::Request& req, httplib::Response& res) { cache_events(req, res); });
    http_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"status":"ok"})", "application/json");
    });
    http_.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      std::vector<std::string> ids = {model_id_};
      if (!o_.alias.empty()) ids.push_back(o_.alias);
      res.set_content(serve::dump_json(serve::models_json(ids, created_)), "application/json");
    });
    http_.Get("/metrics",
              [this](const httplib::Request& req, httplib::Response& res) { metrics(req, res); });
    http_.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      completion(req, res, Endpoint::Chat);
    });
    http_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      completion(req, res, Endpoint::Completion);
    });
  }

  void metrics(const httplib::Request& req, httplib::Response& res) {
    serve::ServerCounters c;
    c.requests = requests_.load();
    c.errors = errors_.load();
    c.kv_budget = o_.kv_budget;
    c.rss_bytes = resident_bytes();
    const json j = serve::metrics_json(scheduler_.metrics(), c);
    if (req.get_param_value("format") == "prometheus")
      res.set_content(serve::prometheus_text(j), "text/plain; version=0.0.4");
    else
      res.set_content(serve::dump_json(j), "application/json");
  }

  bool is_web_asset(const httplib::Request& req) const {
    if (!o_.web || req.method != "GET") return false;
    if (req.path == "/index.html") return true;
    for (const WebAsset& a : web_assets())
      if (req.path == a.path) return true;
    return false;
  }

  // GET /v1/info: what the page shows and offers.
  void info(httplib::Response& res) {
    json kinds = json::array();
    for (const auto& k : kv::policy_kinds())
      kinds.push_back({{"name", k.name}, {"usage", k.usage}, {"help", k.help}});
    const json j = {{"object", "server.info"},
                    {"model", model_id_},
                    {"model_file", std::filesystem::path(o_.model).filename().string()},
                    {"architecture", model_->config().architecture},
                    {"chat", chat_template_.has_value()},
                    {"policy", o_.policy},
                    {"max_cache", o_.max_cache},
                    {"max_tokens_limit", o_.max_tokens_limit},
                    {"default_max_tokens", o_.default_max_tokens},
                    {"policy_kinds", std::move(kinds)},
                    {"version", fmt::format("{} ({})", version(), source_commit())}};
    res.set_content(serve::dump_json(j), "application/json");
  }

  // POST /v1/conversations {"policy": SPEC}: a new conversation, its session made now (so
  // that a bad or too large policy is an error here). Its id is the X-Conversation-Id
  // header's when there is one (a balancer that routes by that header then sends every
  // request of the conversation, this one included, to one backend; 409 when that id is
  // kept already), else a random one.
  void open_conversation(const httplib::Request& req, httplib::Response& res) {
    try {
      std::optional<kv::PolicySpec> policy = serve::parse_conversation_request(req.body, limits_);
      serve::JobSpec spec;
      spec.open_only = true;
      spec.conversation_id = req.get_header_value("X-Conversation-Id");
      if (spec.conversation_id.size() > 256)
        throw ApiError(400, "invalid_request_error", "invalid_value",
                       "the conversation id is longer than 256 bytes");
      if (spec.conversation_id.empty()) spec.conversation_id = serve::random_conversation_id();
      spec.policy = policy.value_or(kv::PolicySpec(o_.policy));
      const std::string id = spec.conversation_id;
      const std::string text = spec.policy->str();
      auto job = scheduler_.submit(std::move(spec));
      for (;;) {
        auto e = job->next(std::chrono::milliseconds(500));
        if (!e) continue;
        if (e->kind == Event::Kind::Error) {
          if (e->unavailable) throw serve::event_error(*e);
          if (e->exists)
            throw ApiError(409, "invalid_request_error", "conversation_exists", e->text);
          throw ApiError(400, "invalid_request_error", "invalid_policy", e->text);
        }
        if (e->kind == Event::Kind::Done) break;
      }
      res.status = 201;
      res.set_header("X-Conversation-Id", id);
      res.set_content(serve::dump_json({{"object", "conversation"}, {"id", id}, {"policy", text}}),
                      "application/json");
    } catch (const ApiError& e) {
      send_error(res, e.status(), e.what(), e.type(), e.code());
    } catch (const serve::Unavailable& e) {
      send_error(res, 503, e.what(), "server_error", "unavailable");
    }
  }

  int64_t int_param(const httplib::Request& req, const char* key, int64_t fallback, int64_t lo,
                    int64_t hi) {
    if (!req.has_param(key)) return fallback;
    const std::string v = req.get_param_value(key);
    int64_t x = 0;
    const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec != std::errc() || p != v.data() + v.size() || x < lo || x > hi)
      throw ApiError(400, "invalid_request_error", "invalid_value",
                     fmt::format("'{}' must be an integer in {}..{}, found '{}'", key, lo, hi, v));
    return x;
  }

  void no_conversation(httplib::Response& res, const std::string& id) {
    send_error(res, 404,
               fmt::format("no conversation '{}' on this server (never made here, or evicted)", id),
               "invalid_request_error", "conversation_not_found");
  }

  // GET /v1/conversations/{id}/cache[?after=V&wait_ms=T]: the view, once newer than
  // version V (waiting at most T ms; default: now).
  void cache_view(const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    try {
      const auto after = static_cast<uint64_t>(int_param(req, "after", 0, 0, INT64_MAX));
      const int64_t wait = int_param(req, "wait_ms", 0, 0, 60000);
      auto v = scheduler_.watch(id, after, std::chrono::milliseconds(wait));
      if (!v) return no_conversation(res, id);
      res.set_header("Cache-Control", "no-store");
      res.set_content(serve::dump_json(serve::cache_view_json(*v, model_->tokenizer())),
                      "application/json");
    } catch (const ApiError& e) {
      send_error(res, e.status(), e.what(), e.type(), e.code());
    }
  }

  // GET /v1/conversations/{id}/cache/events: SSE, one `data:` view per change (at most
  // ten a second), a comment line every few seconds while nothing changes; an `error`
  // event and the end of the stream when the conversation goes away.
  void cache_events(const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1].str();
    if (!scheduler_.watch(id, 0, std::chrono::milliseconds(0))) return no_conversation(res, id);
    res.set_header("Cache-Control", "no-cache");
    auto last = std::make_shared<uint64_t>(0);
    auto sent_at = std::make_shared<std::chrono::steady_clock::time_point>();
    res.set_chunked_content_provider(
        "text/event-stream", [this, id, last, sent_at](size_t, httplib::DataSink& sink) {
          const auto gap =
              std::chrono::milliseconds(100) - (std::chrono::steady_clock::now() - *sent_at);
          if (gap > std::chrono::milliseconds(0)) std::this_thread::sleep_for(gap);
          auto v = scheduler_.watch(id, *last, std::chrono::milliseconds(5000));
          if (!sink.is_writable()) return false;
          if (!v) {
            const std::string line = "event: error\ndata: " +
                                     serve::dump_json(serve::error_json(
                                         fmt::format("conversation '{}' is gone (evicted)", id),
                                         "invalid_request_error", "conversation_not_found")) +
                                     "\n\n";
            sink.write(line.data(), line.size());
            sink.done();
            return true;
          }
          if (v->version <= *last) {
            static constexpr std::string_view kAlive = ": no change\n\n";
            return sink.write(kAlive.data(), kAlive.size());
          }
          *last = v->version;
          *sent_at = std::chrono::steady_clock::now();
          const std::string line =
              "data: " + serve::dump_json(serve::cache_view_json(*v, model_->tokenizer())) + "\n\n";
          return sink.write(line.data(), line.size());
        });
  }

  // Throws 503 "timeout" (and cancels the job) once a request has waited --idle-timeout
  // seconds since `since` for its next event: queued behind others, or stalled between
  // two tokens. (Callers do not count the prompt's encoding, which sends nothing.)
  void check_idle(serve::Job& job, std::chrono::steady_clock::time_point since) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
    if (waited < o_.idle_timeout) return;
    job.cancel();
    throw ApiError(503, "server_error", "timeout",
                   fmt::format("no progress for {:.0f} s (--idle-timeout): the server is busy; "
                               "retry later",
                               waited));
  }

  std::string new_id(const char* prefix) {
    std::lock_guard lk(rng_mu_);
    return fmt::format("{}-{:016x}", prefix, rng_());
  }

  void completion(const httplib::Request& req, httplib::Response& res, Endpoint ep) {
    serve::CompletionRequest r;
    std::vector<TokenId> prompt;
    std::shared_ptr<serve::Job> job;
    Event admitted;
    try {
      if (!starts_with_ci(req.get_header_value("Content-Type"), "application/json"))
        throw ApiError(415, "invalid_request_error", "unsupported_media_type",
                       fmt::format("Content-Type must be application/json, found '{}'",
                                   req.get_header_value("Content-Type")));
      r = serve::parse_request(req.body, ep, limits_, req.get_header_value("X-Conversation-Id"));
      // Every request belongs to a conversation: one without an id gets a random one
      // (X-Conversation-Id of the response) that its follow-ups may name.
      if (r.conversation_id.empty()) r.conversation_id = serve::random_conversation_id();
      const Tokenizer& tok = model_->tokenizer();
      if (ep == Endpoint::Chat) {
        if (!chat_template_)
          throw ApiError(400, "invalid_request_error", "no_chat_template",
                         "the model has no chat template; use /v1/completions");
        EncodeOptions special;
        special.parse_special = true;
        prompt = tok.encode(apply_chat_template(*chat_template_, r.messages), special);
      } else {
        prompt = tok.encode(r.prompt);
      }
      serve::JobSpec spec;
      spec.prompt = std::move(prompt);
      spec.conversation_id = r.conversation_id;
      spec.sampling = r.sampling;
      spec.max_tokens = r.max_tokens;
      spec.stop = r.stop;
      spec.ignore_eos = r.ignore_eos;
      spec.policy = r.policy;
      job = scheduler_.submit(std::move(spec));
      // The scheduler says first how it took the prompt (conversation reuse).
      for (auto idle = std::chrono::steady_clock::now();;) {
        auto e = job->next(std::chrono::milliseconds(500));
        if (!e) {
          check_idle(*job, idle);
          continue;
        }
        if (e->kind == Event::Kind::Error) throw serve::event_error(*e);
        admitted = std::move(*e);
        break;
      }
    } catch (const ApiError& e) {
      send_error(res, e.status(), e.what(), e.type(), e.code());
      return;
    } catch (const serve::Unavailable& e) {
      send_error(res, 503, e.what(), "server_error", "unavailable");
      return;
    } catch (const spillway::Error& e) {
      send_error(res, 400, e.what(), "invalid_request_error", "invalid_request");
      return;
    }
    if (!r.conversation_id.empty()) res.set_header("X-Conversation-Id", r.conversation_id);
    res.set_header("X-Conversation-Reuse", admitted.reuse);
    res.set_header("X-Cached-Tokens", std::to_string(admitted.usage.cached_tokens));
    const bool chat = ep == Endpoint::Chat;
    serve::ResponseHead head;
    head.id = new_id(chat ? "chatcmpl" : "cmpl");
    head.created = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
    head.model = r.model.empty() ? model_id_ : r.model;
    head.endpoint = ep;

    if (!r.stream) {
      std::string text;
      bool started = false;  // the prompt's encoding is not idleness: from the first token on
      for (auto idle = std::chrono::steady_clock::now();;) {
        auto e = job->next(std::chrono::milliseconds(500));
        if (!e) {
          try {
            if (started) check_idle(*job, idle);
          } catch (const ApiError& err) {
            send_error(res, err.status(), err.what(), err.type(), err.code());
            return;
          }
          continue;
        }
        idle = std::chrono::steady_clock::now();
        started = true;
        if (e->kind == Event::Kind::Text) {
          text += e->text;
        } else if (e->kind == Event::Kind::Error) {
          const ApiError err = serve::event_error(*e);
          send_error(res, err.status(), err.what(), err.type(), err.code());
          return;
        } else if (e->kind == Event::Kind::Done) {
          res.set_content(serve::dump_json(serve::completion_json(head, text, e->stop, e->usage)),
                          "application/json");
          return;
        }
      }
    }

    res.set_header("Cache-Control", "no-cache");
    auto finished = std::make_shared<std::atomic<bool>>(false);
    auto sent_role = std::make_shared<bool>(false);
    auto started = std::make_shared<bool>(false);  // a token was sent: idleness counts
    res.set_chunked_content_provider(
        "text/event-stream",
        [=, this](size_t, httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            const std::string line = "data: " + serve::dump_json(j) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          if (chat && !*sent_role) {
            *sent_role = true;
            if (!send(serve::role_chunk_json(head))) return false;
          }
          std::optional<Event> e;
          const auto idle = std::chrono::steady_clock::now();
          while (!(e = job->next(std::chrono::milliseconds(250)))) {
            if (!sink.is_writable()) return false;
            try {
              if (*started) check_idle(*job, idle);
            } catch (const ApiError& err) {
              ++errors_;
              send(serve::error_json(err.what(), err.type(), err.code()));
              finished->store(true);
              sink.done();
              return true;
            }
          }
          *started = true;
          if (e->kind == Event::Kind::Text) return send(serve::text_chunk_json(head, e->text));
          if (e->kind == Event::Kind::Error) {
            ++errors_;
            const ApiError err = serve::event_error(*e);
            send(serve::error_json(err.what(), err.type(), err.code()));
          } else if (!send(serve::last_chunk_json(head, e->stop, e->usage))) {
            return false;
          }
          finished->store(true);
          static constexpr std::string_view kDone = "data: [DONE]\n\n";
          sink.write(kDone.data(), kDone.size());
          sink.done();
          return true;
        },
        [job, finished](bool success) {
          // A client that went away cancels its request.
          if (!success || !finished->load()) job->cancel();
        });
  }

  ServeCliOptions o_;
  std::unique_ptr<model::Model> model_;
  serve::Scheduler scheduler_;
  std::optional<std::string> chat_template_;
  std::string model_id_;
  int64_t created_;
  serve::RequestLimits limits_;
  httplib::Server http_;
  std::atomic<int64_t> requests_{0};
  std::atomic<int64_t> errors_{0};
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
};

int run_serve(const ServeCliOptions& options) {
  ServeCliOptions o = options;
  if (o.max_connections == 0) o.max_connections = std::max<int64_t>(16, 2 * o.max_active + 8);
  if (o.port < 0 || o.port > 65535)
    throw InvalidArgument(fmt::format("serve: --port must be in 0..65535, found {}", o.port));
  if (o.max_prompt_bytes < 1) throw InvalidArgument("serve: --max-prompt-bytes must be >= 1");
  if (o.max_tokens_limit < 1) throw InvalidArgument("serve: --max-tokens-limit must be >= 1");
  if (o.default_max_tokens < 0 || o.default_max_tokens > o.max_tokens_limit)
    throw InvalidArgument("serve: --default-max-tokens must be in 0..--max-tokens-limit");
  serve::SchedulerOptions so;
  so.policy = kv::PolicySpec(o.policy);  // a bad spec is a usage error before the model loads
  so.threads = o.threads;
  so.max_sessions = o.max_sessions;
  so.kv_budget = o.kv_budget;
  so.max_active = o.max_active;
  so.watch_ttl = std::chrono::milliseconds(static_cast<int64_t>(o.watch_ttl * 1000));
  if (o.max_cache < 1) throw InvalidArgument("serve: --max-cache must be >= 1");
  for (const auto& [name, v] : {std::pair{"--read-timeout", o.read_timeout},
                                {"--write-timeout", o.write_timeout},
                                {"--idle-timeout", o.idle_timeout}})
    if (!(v > 0 && v <= 86400))
      throw InvalidArgument(
          fmt::format("serve: {} must be in (0, 86400] seconds, found {}", name, v));
  if (o.max_connections < 0) throw InvalidArgument("serve: --max-connections must be >= 0");
  if (!(o.watch_ttl > 0)) throw InvalidArgument("serve: --watch-ttl must be > 0");
  if (o.max_sessions < 1) throw InvalidArgument("serve: --max-sessions must be >= 1");
  if (o.max_active < 1) throw InvalidArgument("serve: --max-active must be >= 1");

  // Every thread started from here on (pool, scheduler, HTTP workers) inherits this mask:
  // SIGINT and SIGTERM are taken by one thread with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  auto model = model::Model::load(o.model);
  Server server(o, std::move(model), so);
  int port = o.port;
  if (o.port == 0) {
    port = server.http().bind_to_any_port(o.host);
    if (port < 0) throw IoError(fmt::format("serve: cannot bind {}:(any port)", o.host));
  } else if (!server.http().bind_to_port(o.host, o.port)) {
    throw IoError(
        fmt::format("serve: cannot bind {}:{} (in use, or not an address here)", o.host, o.port));
  }
  fmt::print(stderr, "spillway serve: listening on http://{}:{} (model {}, policy {})\n", o.host,
             port, o.model, o.policy);
  std::fflush(stderr);

  std::mutex mu;
  std::condition_variable cv;
  bool main_done = false;
  bool got_signal = false;
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    {
      std::lock_guard lk(mu);
      if (main_done) return;
      got_signal = true;
    }
    fmt::print(stderr, "spillway serve: {} received, shutting down\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.http().stop();  // no new connections; requests in flight may finish
    std::unique_lock lk(mu);
    if (!cv.wait_for(lk, std::chrono::duration<double>(o.shutdown_grace),
                     [&] { return main_done; })) {
      lk.unlock();
      server.scheduler().stop();  // cancel what is left
    }
  });
  server.http().listen_after_bind();
  server.scheduler().stop();
  {
    std::lock_guard lk(mu);
    main_done = true;
  }
  cv.notify_all();
  if (!got_signal) kill(getpid(), SIGTERM);  // wake the waiter
  waiter.join();
  fmt::print(stderr, "spillway serve: stopped\n");
  return 0;
}

Registrar reg("serve", [](CLI::App& app) {
  auto o = std::make_shared<ServeCliOptions>();
  auto* sub = app.add_subcommand(
      "serve", "HTTP server with OpenAI-compatible endpoints (/v1/chat/completions, ...)");
  sub->add_option("--model,-m", o->model, "GGUF model file")->capture_default_str();
  sub->add_option("--host", o->host, "Address to bind")->capture_default_str();
  sub->add_option("--port", o->port, "Port (0: any free port, printed on stderr)")
      ->capture_default_str();
  sub->add_option("--policy", o->policy, "KV-cache policy of every session: " + kv::policy_usage())
      ->capture_default_str();
  sub->add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY'");
  sub->add_option("--alias", o->alias, "Another name the model answers to")->capture_default_str();
  sub->add_option("--threads,-t", o->threads, "Threads of the decode pool (0: all cores)");
  sub->add_option("--max-sessions", o->max_sessions, "Sessions kept (idle ones evicted LRU)")
      ->capture_default_str();
  sub->add_option("--kv-budget", o->kv_budget,
                  "KV storage bytes of all sessions together (0: no limit)")
      ->capture_default_str();
  sub->add_option("--max-active", o->max_active, "Requests decoding together")
      ->capture_default_str();
  sub->add_option("--max-prompt-bytes", o->max_prompt_bytes, "Largest prompt (else 413)")
      ->capture_default_str();
  sub->add_option("--max-tokens-limit", o->max_tokens_limit, "Largest max_tokens of a request")
      ->capture_default_str();
  sub->add_option("--default-max-tokens", o->default_max_tokens,
                  "max_tokens of a request that gives none")
      ->capture_default_str();
  sub->add_option("--max-cache", o->max_cache,
                  "Largest cache (tokens) of a policy a client asks for")
      ->capture_default_str();
  sub->add_option("--watch-ttl", o->watch_ttl,
                  "Seconds a conversation records attention after its cache view was read")
      ->capture_default_str();
  sub->add_flag("!--no-web", o->web, "Serve no web page at /");
  sub->add_option("--max-connections", o->max_connections,
                  "Connections served at once; more are answered 503 with Retry-After "
                  "(0: 2 * --max-active + 8, at least 16)")
      ->capture_default_str();
  sub->add_option("--read-timeout", o->read_timeout,
                  "Seconds a client may stay silent while sending a request (headers or body)")
      ->capture_default_str();
  sub->add_option("--write-timeout", o->write_timeout,
                  "Seconds a client may leave an answer unread before it is dropped")
      ->capture_default_str();
  sub->add_option("--idle-timeout", o->idle_timeout,
                  "Seconds a request may wait in the queue, or between two of its tokens, "
                  "before it fails with 503 (its prompt's encoding does not count)")
      ->capture_default_str();
  sub->add_option("--shutdown-grace", o->shutdown_grace,
                  "Seconds requests in flight may take to finish after SIGINT/SIGTERM")
      ->capture_default_str();
  return [o] { return run_serve(*o); };
});

}  // namespace
}  // namespace spillway::cli
