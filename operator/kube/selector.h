// Label and field selectors as the API server understands them, for the places that filter
// objects locally: FakeKubeClient's List/Watch and the Informer's cache lookups.
// Label grammar: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k`,
// joined by commas (AND). Field selectors: `path=v`, `path==v`, `path!=v` on dotted paths
// (`metadata.name`, `status.phase`).
//
// Thread safety: values; a parsed selector is immutable and may be shared.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/status.h"

namespace kvcache::kube {

class LabelSelector {
 public:
  // Matches everything.
  LabelSelector() = default;
  // Returns InvalidArgument on a malformed selector.
  static StatusOr<LabelSelector> Parse(std::string_view text);
  // From a metav1.LabelSelector object ({matchLabels, matchExpressions}).
  static StatusOr<LabelSelector> FromObject(const nlohmann::json& selector);

  // `labels` is metadata.labels (an object, or null for none).
  bool Matches(const nlohmann::json& labels) const;
  bool Empty() const { return requirements_.empty(); }
  // Equality requirements (`k=v`), usable to pick a label index.
  std::vector<std::pair<std::string, std::string>> Equalities() const;

 private:
  enum class Op { kEquals, kNotEquals, kIn, kNotIn, kExists, kNotExists };
  struct Requirement {
    std::string key;
    Op op;
    std::vector<std::string> values;
  };
  std::vector<Requirement> requirements_;
};

class FieldSelector {
 public:
  FieldSelector() = default;
  static StatusOr<FieldSelector> Parse(std::string_view text);
  bool Matches(const nlohmann::json& object) const;
  bool Empty() const { return requirements_.empty(); }

 private:
  struct Requirement {
    std::string path;
    bool equals;
    std::string value;
  };
  std::vector<Requirement> requirements_;
};

}  // namespace kvcache::kube
