#include "kube/selector.h"

#include <algorithm>
#include <cctype>

namespace kvcache::kube {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits on commas outside parentheses.
std::vector<std::string_view> SplitTopLevel(std::string_view text) {
  std::vector<std::string_view> parts;
  int depth = 0;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '(') ++depth;
    if (text[i] == ')') --depth;
    if (text[i] == ',' && depth == 0) {
      parts.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  parts.push_back(text.substr(start));
  return parts;
}

std::string LabelValue(const nlohmann::json& labels, const std::string& key, bool* present) {
  *present = false;
  if (!labels.is_object()) return "";
  auto it = labels.find(key);
  if (it == labels.end()) return "";
  *present = true;
  return it->is_string() ? it->get<std::string>() : it->dump();
}

}  // namespace

StatusOr<LabelSelector> LabelSelector::Parse(std::string_view text) {
  LabelSelector selector;
  if (Trim(text).empty()) return selector;
  for (std::string_view raw : SplitTopLevel(text)) {
    std::string_view part = Trim(raw);
    if (part.empty()) return InvalidArgumentError("empty requirement in label selector");
    Requirement req;
    size_t pos;
    if (part.front() == '!') {
      req.key = std::string(Trim(part.substr(1)));
      req.op = Op::kNotExists;
    } else if ((pos = part.find("!=")) != std::string_view::npos) {
      req.key = std::string(Trim(part.substr(0, pos)));
      req.op = Op::kNotEquals;
      req.values.emplace_back(Trim(part.substr(pos + 2)));
    } else if ((pos = part.find("==")) != std::string_view::npos) {
      req.key = std::string(Trim(part.substr(0, pos)));
      req.op = Op::kEquals;
      req.values.emplace_back(Trim(part.substr(pos + 2)));
    } else if ((pos = part.find('=')) != std::string_view::npos) {
      req.key = std::string(Trim(part.substr(0, pos)));
      req.op = Op::kEquals;
      req.values.emplace_back(Trim(part.substr(pos + 1)));
    } else if (size_t open = part.find('('); open != std::string_view::npos) {
      if (part.back() != ')') return InvalidArgumentError("unclosed '(' in label selector");
      std::string_view head = Trim(part.substr(0, open));
      size_t space = head.find_last_of(" \t");
      if (space == std::string_view::npos) {
        return InvalidArgumentError("expected 'in' or 'notin' in label selector");
      }
      std::string_view op = head.substr(space + 1);
      req.key = std::string(Trim(head.substr(0, space)));
      if (op == "in") {
        req.op = Op::kIn;
      } else if (op == "notin") {
        req.op = Op::kNotIn;
      } else {
        return InvalidArgumentError("unknown set operator '" + std::string(op) + "'");
      }
      std::string_view inner = part.substr(open + 1, part.size() - open - 2);
      for (std::string_view v : SplitTopLevel(inner)) req.values.emplace_back(Trim(v));
    } else {
      req.key = std::string(part);
      req.op = Op::kExists;
    }
    if (req.key.empty() || req.key.find_first_of(" \t()") != std::string::npos) {
      return InvalidArgumentError("bad key in label selector: '" + std::string(part) + "'");
    }
    selector.requirements_.push_back(std::move(req));
  }
  return selector;
}

StatusOr<LabelSelector> LabelSelector::FromObject(const nlohmann::json& object) {
  LabelSelector selector;
  if (object.is_null()) return selector;
  if (!object.is_object()) return InvalidArgumentError("label selector is not an object");
  if (auto it = object.find("matchLabels"); it != object.end() && it->is_object()) {
    for (const auto& [k, v] : it->items()) {
      selector.requirements_.push_back(
          {k, Op::kEquals, {v.is_string() ? v.get<std::string>() : v.dump()}});
    }
  }
  if (auto it = object.find("matchExpressions"); it != object.end() && it->is_array()) {
    for (const auto& e : *it) {
      Requirement req;
      req.key = e.value("key", "");
      std::string op = e.value("operator", "");
      if (op == "In") {
        req.op = Op::kIn;
      } else if (op == "NotIn") {
        req.op = Op::kNotIn;
      } else if (op == "Exists") {
        req.op = Op::kExists;
      } else if (op == "DoesNotExist") {
        req.op = Op::kNotExists;
      } else {
        return InvalidArgumentError("unknown matchExpressions operator '" + op + "'");
      }
      if (auto values = e.find("values"); values != e.end() && values->is_array()) {
        for (const auto& v : *values) req.values.push_back(v.get<std::string>());
      }
      selector.requirements_.push_back(std::move(req));
    }
  }
  return selector;
}

bool LabelSelector::Matches(const nlohmann::json& labels) const {
  for (const Requirement& req : requirements_) {
    bool present;
    std::string value = LabelValue(labels, req.key, &present);
    bool in = std::find(req.values.begin(), req.values.end(), value) != req.values.end();
    switch (req.op) {
      case Op::kEquals:
      case Op::kIn:
        if (!present || !in) return false;
        break;
      case Op::kNotEquals:
      case Op::kNotIn:
        if (present && in) return false;
        break;
      case Op::kExists:
        if (!present) return false;
        break;
      case Op::kNotExists:
        if (present) return false;
        break;
    }
  }
  return true;
}

std::vector<std::pair<std::string, std::string>> LabelSelector::Equalities() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const Requirement& req : requirements_) {
    if ((req.op == Op::kEquals || req.op == Op::kIn) && req.values.size() == 1) {
      out.emplace_back(req.key, req.values[0]);
    }
  }
  return out;
}

StatusOr<FieldSelector> FieldSelector::Parse(std::string_view text) {
  FieldSelector selector;
  if (Trim(text).empty()) return selector;
  for (std::string_view raw : SplitTopLevel(text)) {
    std::string_view part = Trim(raw);
    Requirement req;
    size_t pos;
    if ((pos = part.find("!=")) != std::string_view::npos) {
      req = {std::string(Trim(part.substr(0, pos))), false,
             std::string(Trim(part.substr(pos + 2)))};
    } else if ((pos = part.find("==")) != std::string_view::npos) {
      req = {std::string(Trim(part.substr(0, pos))), true, std::string(Trim(part.substr(pos + 2)))};
    } else if ((pos = part.find('=')) != std::string_view::npos) {
      req = {std::string(Trim(part.substr(0, pos))), true, std::string(Trim(part.substr(pos + 1)))};
    } else {
      return InvalidArgumentError("bad field selector requirement '" + std::string(part) + "'");
    }
    if (req.path.empty()) return InvalidArgumentError("empty field path in field selector");
    selector.requirements_.push_back(std::move(req));
  }
  return selector;
}

bool FieldSelector::Matches(const nlohmann::json& object) const {
  for (const Requirement& req : requirements_) {
    const nlohmann::json* node = &object;
    size_t start = 0;
    while (node != nullptr && start <= req.path.size()) {
      size_t dot = req.path.find('.', start);
      std::string key = req.path.substr(start, dot == std::string::npos ? dot : dot - start);
      if (!node->is_object() || !node->contains(key)) {
        node = nullptr;
        break;
      }
      node = &(*node)[key];
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    std::string value;
    if (node != nullptr && !node->is_null()) {
      value = node->is_string() ? node->get<std::string>() : node->dump();
    }
    if ((value == req.value) != req.equals) return false;
  }
  return true;
}

}  // namespace kvcache::kube
