// Specification of agent/json_struct: a JWT-SVID's claims (JSON) as the
// google.protobuf.Struct the Workload API returns, with protobuf's JSON
// mapping, and a tree that survives protobuf-c's own encoding.
#include "agent/json_struct.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

struct StructDeleter {
  void operator()(Google__Protobuf__Struct *s) const { mt_json_struct_free(s); }
};
using StructPtr = std::unique_ptr<Google__Protobuf__Struct, StructDeleter>;

StructPtr FromText(const std::string &text) {
  return StructPtr(mt_json_struct_from_text(text.data(), text.size()));
}

const Google__Protobuf__Value *Field(const Google__Protobuf__Struct *s, const char *key) {
  for (size_t i = 0; i < s->n_fields; i++)
    if (strcmp(s->fields[i]->key, key) == 0) return s->fields[i]->value;
  return nullptr;
}

TEST(JsonStruct, ScalarsMapAsProtobufJsonDoes) {
  StructPtr s = FromText(
      "{\"sub\":\"spiffe://example.org/a\",\"exp\":1700000000,\"ratio\":0.5,\"ok\":true,"
      "\"no\":false,\"nothing\":null}");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(6u, s->n_fields);
  const Google__Protobuf__Value *v = Field(s.get(), "sub");
  ASSERT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE, v->kind_case);
  EXPECT_STREQ("spiffe://example.org/a", v->string_value);
  v = Field(s.get(), "exp");
  ASSERT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE, v->kind_case);
  EXPECT_EQ(1700000000.0, v->number_value);
  EXPECT_EQ(0.5, Field(s.get(), "ratio")->number_value);
  EXPECT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE, Field(s.get(), "ok")->kind_case);
  EXPECT_TRUE(Field(s.get(), "ok")->bool_value);
  EXPECT_FALSE(Field(s.get(), "no")->bool_value);
  EXPECT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE, Field(s.get(), "nothing")->kind_case);
}

TEST(JsonStruct, ArraysAndNestedObjectsKeepTheirShape) {
  StructPtr s = FromText(
      "{\"aud\":[\"a\",\"b\",[1,{\"deep\":true}]],\"kubernetes.io\":{\"pod\":{\"name\":\"p\"},"
      "\"empty\":{},\"none\":[]}}");
  ASSERT_NE(s, nullptr);
  const Google__Protobuf__Value *aud = Field(s.get(), "aud");
  ASSERT_EQ(GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE, aud->kind_case);
  ASSERT_EQ(3u, aud->list_value->n_values);
  EXPECT_STREQ("b", aud->list_value->values[1]->string_value);
  const Google__Protobuf__ListValue *inner = aud->list_value->values[2]->list_value;
  ASSERT_EQ(2u, inner->n_values);
  EXPECT_EQ(1.0, inner->values[0]->number_value);
  EXPECT_TRUE(Field(inner->values[1]->struct_value, "deep")->bool_value);
  const Google__Protobuf__Struct *k8s = Field(s.get(), "kubernetes.io")->struct_value;
  EXPECT_STREQ("p", Field(Field(k8s, "pod")->struct_value, "name")->string_value);
  EXPECT_EQ(0u, Field(k8s, "empty")->struct_value->n_fields);
  EXPECT_EQ(0u, Field(k8s, "none")->list_value->n_values);
}

TEST(JsonStruct, TheTreeEncodesAndDecodesWithProtobufC) {
  StructPtr s = FromText("{\"a\":[1,\"x\",null,{\"b\":false}],\"c\":\"\"}");
  ASSERT_NE(s, nullptr);
  std::vector<uint8_t> buf(google__protobuf__struct__get_packed_size(s.get()));
  google__protobuf__struct__pack(s.get(), buf.data());
  Google__Protobuf__Struct *back =
      google__protobuf__struct__unpack(nullptr, buf.size(), buf.data());
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(2u, back->n_fields);
  google__protobuf__struct__free_unpacked(back, nullptr);
}

TEST(JsonStruct, OnlyAnObjectIsAStruct) {
  EXPECT_EQ(nullptr, FromText("[1,2]"));
  EXPECT_EQ(nullptr, FromText("\"text\""));
  EXPECT_EQ(nullptr, FromText("not json"));
  EXPECT_EQ(nullptr, FromText("{\"a\":1,\"a\":2}"));  // duplicate member: ambiguous claims
  EXPECT_EQ(nullptr, mt_json_struct_from_json(nullptr));
  mt_json_struct_free(nullptr);
  StructPtr empty = FromText("{}");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(0u, empty->n_fields);
}

}  // namespace
