// moeq config-reference: every recipe key, its type, default, allowed values and meaning, as the
// Markdown of docs/configuration.md, generated from the schemas the recipe reader checks against
// (so the reference cannot drift from the reader: a test compares the two).
#include <cstdio>
#include <string>
#include <variant>

#include <fmt/format.h>

#include "commands.h"
#include "moeq/registry/config.h"
#include "moeq/registry/schema.h"

namespace moeq::cli {
namespace {

std::string default_text(const Field& field) {
  if (field.required) {
    return "required";
  }
  return std::visit(
      [&](const auto& value) -> std::string {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<T, bool>) {
          return value ? "`true`" : "`false`";
        } else if constexpr (std::is_same_v<T, int64_t>) {
          return field.type == FieldType::kByteSize && value % 1'000'000'000 == 0
                     ? fmt::format("`{}GB`", value / 1'000'000'000)
                     : fmt::format("`{}`", value);
        } else if constexpr (std::is_same_v<T, double>) {
          return fmt::format("`{:g}`", value);
        } else if constexpr (std::is_same_v<T, std::string>) {
          return value.empty() ? std::string("`\"\"`") : fmt::format("`{}`", value);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          return fmt::format("`[{}]`", fmt::join(value, ", "));
        } else {
          return "–";
        }
      },
      field.default_value);
}

std::string allowed_text(const Field& field) {
  if (!field.choices.empty()) {
    return fmt::format("{}", fmt::join(field.choices, ", "));
  }
  if (field.min || field.max) {
    return fmt::format("{}{}, {}{}", field.min_exclusive ? "(" : "[",
                       field.min ? fmt::format("{:g}", *field.min) : "-inf",
                       field.max ? fmt::format("{:g}", *field.max) : "inf", "]");
  }
  return "";
}

void print_section(const Schema& schema, const std::string& prefix) {
  std::printf("| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n");
  for (const Field& field : schema.fields()) {
    std::printf("| `%s%s` | %s | %s | %s | %s |\n", prefix.c_str(), field.name.c_str(),
                std::string(describe(field.type)).c_str(), default_text(field).c_str(),
                allowed_text(field).c_str(), field.doc.c_str());
  }
  for (const Field& field : schema.fields()) {
    if (field.type == FieldType::kSection && field.section) {
      std::printf("\n### `%s%s`\n\n", prefix.c_str(), field.name.c_str());
      print_section(*field.section, prefix + field.name + ".");
    }
  }
}

}  // namespace

Command add_config_reference_command(CLI::App& app) {
  CLI::App* c = app.add_subcommand(
      "config-reference", "print every recipe key with its type, default and meaning (Markdown)");
  return Command{c, [] {
                   std::printf("### Top level\n\n");
                   print_section(*recipe_schema(), "");
                   return 0;
                 }};
}

}  // namespace moeq::cli
