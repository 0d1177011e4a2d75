// The run report (report.h): JSON from the pipeline's result, HTML drawn from the JSON.
#include "moeq/pipeline/report.h"

#include <moeq/core/error.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

namespace moeq::pipeline {
namespace {

using Json = nlohmann::json;

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string bytes_text(double bytes) {
  if (bytes >= 1e9)
    return fmt::format("{:.2f} GB", bytes / 1e9);
  if (bytes >= 1e6)
    return fmt::format("{:.2f} MB", bytes / 1e6);
  if (bytes >= 1e3)
    return fmt::format("{:.1f} kB", bytes / 1e3);
  return fmt::format("{:.0f} B", bytes);
}

// White to `rgb` by t in [0, 1].
std::string shade(double t, int r, int g, int b) {
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0);
  const auto mix = [t](int c) { return static_cast<int>(255.0 + (c - 255.0) * t + 0.5); };
  return fmt::format("#{:02x}{:02x}{:02x}", mix(r), mix(g), mix(b));
}

void write_file(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  MOEQ_CHECK(out.good(), "cannot write the report '{}'", file.string());
  out << text;
  out.close();
  MOEQ_CHECK(out.good(), "writing the report '{}' failed (disk full?)", file.string());
}

// One heatmap: rows (label, values per column), a color per value, a title per cell, outlined
// cells.
struct Heatmap {
  std::string title;
  std::string caption;
  std::vector<std::string> rows;
  std::vector<std::vector<double>> values;
  std::vector<std::vector<std::string>> tips;
  std::vector<std::vector<bool>> outline;
  int r, g, b;
  double max_value;
};

std::string svg_heatmap(const Heatmap& h) {
  size_t cols = 0;
  for (const auto& row : h.values)
    cols = std::max(cols, row.size());
  const int cell = cols > 64 ? 6 : (cols > 16 ? 12 : 24);
  const int left = 260;
  const int top = 24;
  const int width = left + static_cast<int>(cols) * cell + 20;
  const int height = top + static_cast<int>(h.rows.size()) * cell + 20;
  std::string s = fmt::format(
      "<h2>{}</h2><p>{}</p><svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' "
      "font-family='sans-serif' font-size='11'>",
      escape(h.title), escape(h.caption), width, height);
  for (size_t c = 0; c < cols; c += (cols > 16 ? 8 : 1)) {
    s +=
        fmt::format("<text x='{}' y='{}'>{}</text>", left + static_cast<int>(c) * cell, top - 6, c);
  }
  for (size_t r = 0; r < h.rows.size(); ++r) {
    const int y = top + static_cast<int>(r) * cell;
    s += fmt::format("<text x='0' y='{}'>{}</text>", y + cell - 3, escape(h.rows[r]));
    for (size_t c = 0; c < h.values[r].size(); ++c) {
      const double v = h.values[r][c];
      const double t = h.max_value > 0 ? v / h.max_value : 0.0;
      const bool mark = h.outline[r][c];
      s += fmt::format(
          "<rect x='{}' y='{}' width='{}' height='{}' fill='{}' stroke='{}' stroke-width='{}'>"
          "<title>{}</title></rect>",
          left + static_cast<int>(c) * cell, y, cell - 1, cell - 1, shade(t, h.r, h.g, h.b),
          mark ? "#d00000" : "#dddddd", mark ? 2 : 0.5, escape(h.tips[r][c]));
    }
  }
  s += "</svg>";
  return s;
}

std::string svg_lines(const std::string& title,
                      const std::vector<std::pair<std::string, std::vector<double>>>& series) {
  size_t n = 0;
  double top_value = 0.0;
  for (const auto& [name, v] : series) {
    n = std::max(n, v.size());
    for (double x : v)
      top_value = std::max(top_value, std::isfinite(x) ? x : 0.0);
  }
  const int w = 640;
  const int h = 220;
  const int pad = 40;
  std::string s = fmt::format(
      "<h2>{}</h2><svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' "
      "font-family='sans-serif' font-size='11'><line x1='{}' y1='{}' x2='{}' y2='{}' "
      "stroke='#888'/><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='#888'/>"
      "<text x='2' y='{}'>{:.3g}</text><text x='2' y='{}'>0</text>",
      escape(title), w, h + 30, pad, pad / 2, pad, h, pad, h, w - 10, h, pad / 2 + 4, top_value, h);
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c"};
  for (size_t k = 0; k < series.size(); ++k) {
    const auto& v = series[k].second;
    std::string points;
    for (size_t i = 0; i < v.size(); ++i) {
      const double x = pad + (n > 1 ? static_cast<double>(i) * (w - pad - 20) / (n - 1) : 0.0);
      const double y = h - (top_value > 0 ? v[i] / top_value : 0.0) * (h - pad / 2);
      points += fmt::format("{:.1f},{:.1f} ", x, y);
      s += fmt::format(
          "<circle cx='{:.1f}' cy='{:.1f}' r='3' fill='{}'><title>layer {}: "
          "{:.4g}</title></circle>",
          x, y, colors[k % 3], i, v[i]);
    }
    s += fmt::format("<polyline fill='none' stroke='{}' points='{}'/>", colors[k % 3], points);
    s += fmt::format("<text x='{}' y='{}' fill='{}'>{}</text>", pad + 10 + 200 * k, h + 22,
                     colors[k % 3], escape(series[k].first));
  }
  s += fmt::format("<text x='{}' y='{}'>layer</text></svg>", w / 2, h + 12);
  return s;
}

// One stacked bar per layer: where its time went (phase_seconds), hover for the seconds. A
// layer whose quantize segment dwarfs the rest is export-bound; a long load, source-bound.
std::string svg_time_bars(const Json& layers) {
  constexpr std::pair<const char*, const char*> kPhases[] = {{"load", "#9467bd"},
                                                             {"calibrate", "#1f77b4"},
                                                             {"quantize", "#ff7f0e"},
                                                             {"forward", "#2ca02c"}};
  double top = 0.0;
  for (const auto& layer : layers) {
    top = std::max(top, layer["seconds"].get<double>());
  }
  const int n = static_cast<int>(layers.size());
  const int bar = std::clamp(600 / std::max(n, 1), 4, 24);
  const int pad = 40;
  const int h = 180;
  const int w = pad + n * (bar + 2) + 20;
  std::string s = fmt::format(
      "<h2>Time per layer</h2><p>Seconds per layer by phase: load (read and dequantize the "
      "source, place it), calibrate (the original layer under the observers), quantize (scales, "
      "fake weights, export), forward (evaluation streams and the quantized reruns).</p>"
      "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' "
      "font-size='11'><line x1='{}' y1='{}' x2='{}' y2='{}' stroke='#888'/>"
      "<text x='2' y='14'>{:.3g} s</text><text x='2' y='{}'>0</text>",
      std::max(w, 420), h + 30, pad, h, w - 10, h, top, h);
  for (int i = 0; i < n; ++i) {
    const auto& layer = layers[i];
    const auto& phases = layer["phase_seconds"];
    double y = h;
    for (const auto& [phase, color] : kPhases) {
      const double seconds = phases.value(phase, 0.0);
      const double height = top > 0 ? seconds / top * (h - 20) : 0.0;
      y -= height;
      s += fmt::format(
          "<rect x='{}' y='{:.1f}' width='{}' height='{:.1f}' fill='{}'><title>layer {}: {} "
          "{:.2f} s of {:.2f} s</title></rect>",
          pad + i * (bar + 2), y, bar, height, color, layer["index"].get<int64_t>(), phase, seconds,
          layer["seconds"].get<double>());
    }
  }
  int x = pad;
  for (const auto& [phase, color] : kPhases) {
    s += fmt::format(
        "<rect x='{}' y='{}' width='10' height='10' fill='{}'/><text x='{}' y='{}'>{}"
        "</text>",
        x, h + 14, color, x + 14, h + 23, phase);
    x += 90;
  }
  s += "</svg>";
  return s;
}

double fraction(int64_t count, int64_t total) {
  return total > 0 ? static_cast<double>(count) / static_cast<double>(total) : 0.0;
}

// The report's form of one side's agreement: fractions of the block's tokens.
Json agreement_json(const RoutingAgreement& a, int64_t tokens, int64_t top_k) {
  return {{"same_set", fraction(a.same_set, tokens)},
          {"overlap", fraction(a.overlap, tokens * top_k)},
          {"top1_changed", fraction(a.top1_changed, tokens)},
          {"expert_tokens", a.expert_tokens}};
}

// eval.routing: every MoE block's counts summed (each block saw the same tokens), and the block
// whose top-k sets changed most on the carried stream.
Json routing_summary(const std::vector<LayerResult>& layers) {
  RoutingAgreement own;
  RoutingAgreement carried;
  int64_t tokens = 0;
  int64_t picks = 0;
  int64_t blocks = 0;
  Json worst = nullptr;
  double worst_same = 2.0;
  for (const auto& layer : layers) {
    for (const auto& r : layer.routing) {
      for (auto [sum, a] : {std::pair{&own, &r.own}, std::pair{&carried, &r.carried}}) {
        sum->same_set += a->same_set;
        sum->overlap += a->overlap;
        sum->top1_changed += a->top1_changed;
      }
      tokens += r.tokens;
      picks += r.tokens * r.top_k;
      ++blocks;
      const double same = fraction(r.carried.same_set, r.tokens);
      if (same < worst_same) {
        worst_same = same;
        worst = {{"layer", layer.index}, {"block", r.block}, {"same_set", same}};
      }
    }
  }
  if (blocks == 0) {
    return nullptr;
  }
  const auto side = [&](const RoutingAgreement& a) {
    return Json{{"same_set", fraction(a.same_set, tokens)},
                {"overlap", fraction(a.overlap, picks)},
                {"top1_changed", fraction(a.top1_changed, tokens)}};
  };
  return {{"blocks", blocks}, {"own", side(own)}, {"carried", side(carried)}, {"worst", worst}};
}

// Per MoE block, the agreement of the quantized model's expert choices with the original's (own
// and carried), and a heatmap of how much each expert's share of the picks moved.
std::string routing_html(const Json& layers) {
  std::string rows;
  Heatmap shift{"Routing shift per expert (carried)",
                "|quantized - original| share of the block's expert picks on the evaluation "
                "tokens, the quantized model on its own stream (darker: larger). Hover a cell for "
                "the token counts.",
                {},
                {},
                {},
                {},
                117,
                58,
                158,
                0.0};
  for (const auto& layer : layers) {
    for (const auto& r : layer["routing"]) {
      const auto name = r["block"].get<std::string>();
      const auto tokens = r["tokens"].get<int64_t>();
      const auto k = r["top_k"].get<int64_t>();
      const auto pct = [&](const char* side, const char* key) {
        return 100.0 * r[side][key].get<double>();
      };
      const bool changed = r["carried"]["same_set"].get<double>() < 1.0;
      rows += fmt::format(
          "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2f} %</td><td>{:.2f} %</td>"
          "<td>{:.4f}</td><td>{:.4f}</td><td>{:.2f} %</td><td>{:.2f} %</td></tr>",
          changed ? "" : " style='color:#666'", layer["index"].get<int64_t>(), escape(name), tokens,
          k, pct("own", "same_set"), pct("carried", "same_set"), r["own"]["overlap"].get<double>(),
          r["carried"]["overlap"].get<double>(), pct("own", "top1_changed"),
          pct("carried", "top1_changed"));
      const double picks = static_cast<double>(tokens * k);
      std::vector<double> values;
      std::vector<std::string> tips;
      for (size_t e = 0; e < r["reference"]["expert_tokens"].size(); ++e) {
        const auto ref = r["reference"]["expert_tokens"][e].get<int64_t>();
        const auto quant = r["carried"]["expert_tokens"][e].get<int64_t>();
        values.push_back(picks > 0 ? std::abs(static_cast<double>(quant - ref)) / picks : 0.0);
        shift.max_value = std::max(shift.max_value, values.back());
        tips.push_back(fmt::format("{} expert {}: original {} tokens, quantized {} ({:+})", name, e,
                                   ref, quant, quant - ref));
      }
      shift.rows.push_back(name);
      shift.outline.emplace_back(values.size(), false);
      shift.values.push_back(std::move(values));
      shift.tips.push_back(std::move(tips));
    }
  }
  if (rows.empty()) {
    return {};
  }
  std::string s =
      "<h2>Routing agreement</h2><p>The quantized model's top-k expert choices against the "
      "original's, per token of the evaluation. <b>own</b>: the quantized layer on the original's "
      "inputs to the layer (its own attention and router error); <b>carried</b>: on the quantized "
      "model's own stream (what an engine running it routes). Overlap: mean |A&cap;B|/k. Grey: "
      "every top-k set unchanged.</p><table><tr><th>layer</th><th>block</th><th>tokens</th>"
      "<th>k</th><th>set unchanged (own)</th><th>set unchanged (carried)</th><th>overlap "
      "(own)</th><th>overlap (carried)</th><th>top-1 changed (own)</th><th>top-1 changed "
      "(carried)</th></tr>";
  s += rows;
  s += "</table>";
  s += svg_heatmap(shift);
  return s;
}

}  // namespace

int64_t Report::starved_threshold(int64_t block_tokens) {
  return std::min<int64_t>(10, std::max<int64_t>(1, block_tokens / 100));
}

Report::Report(const PipelineResult& result, const RunInfo& info) {
  Json run = {
      {"model", info.model},
      {"architecture", result.architecture},
      {"scheme", info.scheme},
      {"format", info.format},
      {"device", info.device},
      {"dtype", info.dtype},
      {"calibration", info.calibration},
      {"mode", info.mode},
      {"min_tokens", info.min_tokens},
      {"calibration_tokens", result.calibration_tokens},
      {"seconds", result.seconds},
      {"quantized_parameters", result.quantized_parameters},
      {"bits_per_weight", result.quantized_parameters > 0
                              ? 8.0 * static_cast<double>(result.quantized_bytes) /
                                    static_cast<double>(result.quantized_parameters)
                              : 0.0},
      {"output", result.output.string()},
      {"output_bytes", result.output_bytes},
      {"source_bytes", info.source_bytes},
      {"peak_host_bytes", info.peak_host_bytes},
      {"peak_device_bytes", result.peak_device_bytes},
  };
  Json layers = Json::array();
  Json starved = Json::array();
  for (const auto& layer : result.layers) {
    Json blocks = Json::array();
    for (const auto& cov : layer.coverage) {
      Json fallback = Json::array();
      for (bool f : cov.fallback)
        fallback.push_back(f);
      blocks.push_back({{"block", cov.block},
                        {"adapter", cov.adapter},
                        {"tokens", cov.tokens},
                        {"routed", cov.routed},
                        {"seen", cov.seen},
                        {"fallback", fallback}});
      const auto threshold = starved_threshold(cov.tokens);
      for (int64_t e = 0; e < cov.num_experts(); ++e) {
        if (cov.routed[e] < threshold || cov.fallback[e]) {
          starved.push_back({{"layer", layer.index},
                             {"block", cov.block},
                             {"expert", e},
                             {"routed", cov.routed[e]},
                             {"seen", cov.seen[e]},
                             {"fallback", static_cast<bool>(cov.fallback[e])}});
        }
      }
    }
    Json projections = Json::array();
    for (const auto& p : layer.projections) {
      projections.push_back({{"module", p.module},
                             {"block", p.block},
                             {"expert", p.expert},
                             {"kind", p.kind},
                             {"weight_error", p.weight_error},
                             {"rows_seen", p.rows_seen},
                             {"fallback", p.fallback}});
    }
    Json routing = Json::array();
    for (const auto& r : layer.routing) {
      routing.push_back({{"block", r.block},
                         {"tokens", r.tokens},
                         {"top_k", r.top_k},
                         {"num_experts", r.num_experts},
                         {"reference", {{"expert_tokens", r.reference_expert_tokens}}},
                         {"own", agreement_json(r.own, r.tokens, r.top_k)},
                         {"carried", agreement_json(r.carried, r.tokens, r.top_k)}});
    }
    layers.push_back({{"index", layer.index},
                      {"skipped", layer.skipped},
                      {"seconds", layer.seconds},
                      {"phase_seconds",
                       {{"load", layer.phases.load},
                        {"calibrate", layer.phases.calibrate},
                        {"quantize", layer.phases.quantize},
                        {"forward", layer.phases.forward}}},
                      {"tokens", layer.tokens},
                      {"tokens_per_second", layer.seconds > 0 ? layer.tokens / layer.seconds : 0.0},
                      {"peak_device_bytes", layer.peak_device_bytes},
                      {"peak_device_reserved_bytes", layer.peak_device_reserved_bytes},
                      {"weight_bytes", layer.weight_bytes},
                      {"output_error", layer.output_error},
                      {"eval_hidden_error", layer.eval_hidden_error},
                      {"blocks", blocks},
                      {"routing", routing},
                      {"projections", projections}});
  }
  Json eval = nullptr;
  if (result.eval) {
    const auto& e = *result.eval;
    eval = {{"tokens", e.tokens},
            {"kl",
             {{"mean", e.kl_mean},
              {"p50", e.kl_p50},
              {"p90", e.kl_p90},
              {"p99", e.kl_p99},
              {"max", e.kl_max}}},
            {"ppl_reference", e.ppl_reference},
            {"ppl_quantized", e.ppl_quantized},
            {"top1_agreement", e.top1_agreement},
            {"routing", routing_summary(result.layers)}};
  }
  json_ = {{"moeq_report", 1}, {"run", run},
           {"layers", layers}, {"starved_experts", starved},
           {"eval", eval},     {"ignored_modules", result.ignored_modules}};
}

void Report::write_json(const std::filesystem::path& file) const {
  write_file(file, json_.dump(2) + "\n");
}

void Report::write_html(const std::filesystem::path& file) const {
  write_file(file, html());
}

std::string Report::html() const {
  const auto& run = json_["run"];
  std::string s =
      "<!doctype html><html><head><meta charset='utf-8'><title>moeq report</title><style>"
      "body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}h2{margin-top:32px}"
      ".warn{color:#b00000}</style></head><body>";
  s += fmt::format(
      "<h1>moeq: {} &rarr; {} ({})</h1><table>", escape(run["model"].get<std::string>()),
      escape(run["scheme"].get<std::string>()), escape(run["format"].get<std::string>()));
  for (const auto& [key, value] : run.items()) {
    s += fmt::format("<tr><th>{}</th><td>{}</td></tr>", escape(key),
                     escape(value.is_string() ? value.get<std::string>() : value.dump()));
  }
  s += "</table>";
  if (!json_["eval"].is_null()) {
    const auto& e = json_["eval"];
    s += fmt::format(
        "<h2>Evaluation ({} held-out tokens)</h2><table><tr><th>KL divergence (nats/token)</th>"
        "<td>mean {:.5f}, p50 {:.5f}, p90 {:.5f}, p99 {:.5f}, max {:.5f}</td></tr>"
        "<tr><th>perplexity</th><td>original {:.4f}, quantized {:.4f}</td></tr>"
        "<tr><th>top-1 agreement</th><td>{:.2f} %</td></tr></table>",
        e["tokens"].get<int64_t>(), e["kl"]["mean"].get<double>(), e["kl"]["p50"].get<double>(),
        e["kl"]["p90"].get<double>(), e["kl"]["p99"].get<double>(), e["kl"]["max"].get<double>(),
        e["ppl_reference"].get<double>(), e["ppl_quantized"].get<double>(),
        100.0 * e["top1_agreement"].get<double>());
  }
  // Coverage and error heatmaps, one row per MoE block.
  Heatmap routed{"Routed token share per expert",
                 "Share of the block's routing decisions each expert got (darker: more). Red "
                 "outline: starved (fewer routed tokens than min(10, 1% of tokens), or weight-only "
                 "fallback). Hover a cell for the numbers.",
                 {},
                 {},
                 {},
                 {},
                 31,
                 119,
                 180,
                 0.0};
  Heatmap error{"Weight quantization error per expert",
                "Relative RMS error of the expert's worst projection (darker: larger).",
                {},
                {},
                {},
                {},
                230,
                85,
                13,
                0.0};
  std::vector<double> output_error;
  std::vector<double> eval_error;
  for (const auto& layer : json_["layers"]) {
    output_error.push_back(layer["output_error"].get<double>());
    eval_error.push_back(layer["eval_hidden_error"].get<double>());
    std::map<std::pair<std::string, int64_t>, std::pair<double, std::string>> worst;
    for (const auto& p : layer["projections"]) {
      const auto key = std::make_pair(p["block"].get<std::string>(), p["expert"].get<int64_t>());
      const double err = p["weight_error"].get<double>();
      if (err >= worst[key].first) {
        worst[key] = {err, p["module"].get<std::string>()};
      }
    }
    for (const auto& block : layer["blocks"]) {
      const auto name = block["block"].get<std::string>();
      const auto tokens = block["tokens"].get<int64_t>();
      const auto threshold = starved_threshold(tokens);
      std::vector<double> share;
      std::vector<std::string> tips;
      std::vector<bool> marks;
      std::vector<double> errs;
      std::vector<std::string> err_tips;
      std::vector<bool> no_marks;
      int64_t total = 0;
      for (const auto& r : block["routed"])
        total += r.get<int64_t>();
      for (size_t e = 0; e < block["routed"].size(); ++e) {
        const auto r = block["routed"][e].get<int64_t>();
        const auto seen = block["seen"][e].get<int64_t>();
        const bool fb = block["fallback"][e].get<bool>();
        share.push_back(total > 0 ? static_cast<double>(r) / static_cast<double>(total) : 0.0);
        routed.max_value = std::max(routed.max_value, share.back());
        tips.push_back(fmt::format("{} expert {}: routed {}, seen {}{}", name, e, r, seen,
                                   fb ? " (fallback)" : ""));
        marks.push_back(r < threshold || fb);
        const auto w = worst.find({name, static_cast<int64_t>(e)});
        const double err = w == worst.end() ? 0.0 : w->second.first;
        errs.push_back(err);
        error.max_value = std::max(error.max_value, err);
        err_tips.push_back(
            fmt::format("{}: {:.5f}", w == worst.end() ? name : w->second.second, err));
        no_marks.push_back(r < threshold || fb);
      }
      routed.rows.push_back(name);
      routed.values.push_back(share);
      routed.tips.push_back(tips);
      routed.outline.push_back(marks);
      error.rows.push_back(name);
      error.values.push_back(errs);
      error.tips.push_back(err_tips);
      error.outline.push_back(no_marks);
    }
  }
  if (!routed.rows.empty()) {
    s += svg_heatmap(routed);
  }
  const auto& starved = json_["starved_experts"];
  s += fmt::format("<h2>Starved experts ({})</h2>", starved.size());
  if (starved.empty()) {
    s += "<p>Every expert got enough routed tokens.</p>";
  } else {
    s += "<table><tr><th>layer</th><th>block</th><th>expert</th><th>routed</th><th>seen</th>"
         "<th>fallback</th></tr>";
    for (const auto& x : starved) {
      s += fmt::format(
          "<tr class='warn'><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
          "<td>{}</td></tr>",
          x["layer"].get<int64_t>(), escape(x["block"].get<std::string>()),
          x["expert"].get<int64_t>(), x["routed"].get<int64_t>(), x["seen"].get<int64_t>(),
          x["fallback"].get<bool>() ? "yes" : "no");
    }
    s += "</table>";
  }
  if (!error.rows.empty()) {
    s += svg_heatmap(error);
  }
  s += routing_html(json_["layers"]);
  std::vector<std::pair<std::string, std::vector<double>>> series = {
      {"layer output error (calibration inputs)", output_error}};
  if (!json_["eval"].is_null()) {
    series.emplace_back("hidden-state error (evaluation, accumulated)", eval_error);
  }
  s += svg_lines("Per-layer error (relative RMS)", series);
  s += svg_time_bars(json_["layers"]);
  s += "</body></html>\n";
  return s;
}

std::string Report::summary_text() const {
  const auto& run = json_["run"];
  std::string s =
      fmt::format("\nmoeq: {} ({}) -> {} [{}, {}]\n", run["model"].get<std::string>(),
                  run["architecture"].get<std::string>(), run["output"].get<std::string>(),
                  run["scheme"].get<std::string>(), run["format"].get<std::string>());
  const double seconds = run["seconds"].get<double>();
  const auto tokens = run["calibration_tokens"].get<int64_t>();
  s += fmt::format(
      "  time {:.1f} s on {} ({}), {} layers, {} calibration tokens ({:.0f} tok/s "
      "per layer pass)\n",
      seconds, run["device"].get<std::string>(), run["dtype"].get<std::string>(),
      json_["layers"].size(), tokens,
      seconds > 0 ? tokens * static_cast<double>(json_["layers"].size()) / seconds : 0.0);
  if (run["bits_per_weight"].get<double>() > 0.0) {
    s += fmt::format(
        "  quantized {} parameters at {:.3f} bits per weight; output {} (source {}), "
        "peak host memory {}\n",
        run["quantized_parameters"].get<int64_t>(), run["bits_per_weight"].get<double>(),
        bytes_text(run["output_bytes"].get<double>()),
        bytes_text(run["source_bytes"].get<double>()),
        bytes_text(run["peak_host_bytes"].get<double>()));
  } else {  // moeq eval: fake quantization, or an export read back
    s += fmt::format(
        "  quantized {} parameters (nothing written; source {}), peak host memory {}\n",
        run["quantized_parameters"].get<int64_t>(), bytes_text(run["source_bytes"].get<double>()),
        bytes_text(run["peak_host_bytes"].get<double>()));
  }
  if (run.value("peak_device_bytes", int64_t{0}) > 0) {
    int64_t largest = 0;
    int64_t largest_layer = 0;
    for (const auto& layer : json_["layers"]) {
      if (layer["peak_device_bytes"].get<int64_t>() > largest) {
        largest = layer["peak_device_bytes"].get<int64_t>();
        largest_layer = layer["index"].get<int64_t>();
      }
    }
    s += fmt::format("  peak GPU memory in tensors {} (layer {}; report.json has every layer's)\n",
                     bytes_text(run["peak_device_bytes"].get<double>()), largest_layer);
  }
  double worst = 0.0;
  int64_t worst_layer = 0;
  for (const auto& layer : json_["layers"]) {
    if (layer["output_error"].get<double>() >= worst) {
      worst = layer["output_error"].get<double>();
      worst_layer = layer["index"].get<int64_t>();
    }
  }
  s += fmt::format("  worst layer output error {:.4f} (layer {}); starved experts: {}\n", worst,
                   worst_layer, json_["starved_experts"].size());
  if (!json_["eval"].is_null()) {
    const auto& e = json_["eval"];
    s += fmt::format(
        "  eval on {} held-out tokens: KL mean {:.5f} (p99 {:.5f}), perplexity {:.4f} -> {:.4f}, "
        "top-1 agreement {:.2f} %\n",
        e["tokens"].get<int64_t>(), e["kl"]["mean"].get<double>(), e["kl"]["p99"].get<double>(),
        e["ppl_reference"].get<double>(), e["ppl_quantized"].get<double>(),
        100.0 * e["top1_agreement"].get<double>());
    if (!e["routing"].is_null()) {
      const auto& r = e["routing"];
      s += fmt::format(
          "  routing over {} MoE blocks: top-k set unchanged {:.2f} % (own {:.2f} %), overlap "
          "{:.4f}, top-1 expert changed {:.2f} %; worst layer {} ({:.2f} % unchanged)\n",
          r["blocks"].get<int64_t>(), 100.0 * r["carried"]["same_set"].get<double>(),
          100.0 * r["own"]["same_set"].get<double>(), r["carried"]["overlap"].get<double>(),
          100.0 * r["carried"]["top1_changed"].get<double>(), r["worst"]["layer"].get<int64_t>(),
          100.0 * r["worst"]["same_set"].get<double>());
    }
  }
  return s;
}

}  // namespace moeq::pipeline
