/* test_json.c: the engine's strict JSON reader on valid and invalid texts.
 *
 * Valid documents are read back through every accessor; each invalid one
 * must fail with -1, leave *out NULL and say where (the byte offset) and
 * what was expected.
 */
#include "check.h"
#include <ditmoe/dit_json.h>

#include <math.h>
#include <stdint.h>

static dit_json_doc *parse_ok(const char *text, size_t len, int flags)
{
    dit_json_doc *d = (dit_json_doc *)1;
    char err[256];
    int rc = dit_json_parse_ex(text, len, flags, &d, err, sizeof err);
    CHECK(rc == 0 && d, "parsing %.60s: rc %d: %s", text, rc, err);
    return rc ? NULL : d;
}

static void parse_bad(const char *text, size_t len, const char *want)
{
    dit_json_doc *d = (dit_json_doc *)1;
    char err[256] = "unset";
    int rc = dit_json_parse(text, len, &d, err, sizeof err);
    CHECK(rc == -1, "'%.*s' parsed (rc %d)", (int)len, text, rc);
    CHECK(d == NULL, "'%.*s': *out not NULL on failure", (int)len, text);
    CHECK(strstr(err, want) != NULL, "'%.*s': error '%s' lacks '%s'", (int)len,
          text, err, want);
    CHECK(!strncmp(err, "byte ", 5), "'%.*s': error '%s' has no byte offset",
          (int)len, text, err);
    dit_json_free(rc ? NULL : d);
}

static void test_document(void)
{
    const char *t = " {\"a\": 1, \"b\": [true, false, null], \"c\": "
                    "\"x\\u00e9\\ud83d\\ude00\\n\\\"\\\\\\/\\b\\f\\r\\t\", "
                    "\"d\": {}, \"e\": [], \"f\": -2.5e-1}\r\n";
    dit_json_doc *d = parse_ok(t, strlen(t), 0);
    if (!d)
        return;
    const dit_json *r = dit_json_root(d);
    CHECK(dit_json_type(r) == DIT_JSON_OBJECT && dit_json_len(r) == 6, "root %d/%zu", dit_json_type(r),
          dit_json_len(r));
    const char *order = "abcdef";
    for (size_t i = 0; i < 6; i++)
        CHECK(dit_json_str(dit_json_key(r, i)) && dit_json_str(dit_json_key(r, i))[0] == order[i] &&
                  dit_json_len(dit_json_key(r, i)) == 1, "key %zu out of order", i);
    int64_t v = 0;
    CHECK(dit_json_int(dit_json_get(r, "a"), &v) && v == 1, "a = %lld", (long long)v);
    CHECK(dit_json_at(r, 0) == dit_json_get(r, "a"), "dit_json_at(object) is not the member value");
    const dit_json *b = dit_json_get(r, "b");
    CHECK(dit_json_type(b) == DIT_JSON_ARRAY && dit_json_len(b) == 3, "b");
    CHECK(dit_json_bool(dit_json_at(b, 0)) == 1 && dit_json_bool(dit_json_at(b, 1)) == 0 &&
              dit_json_type(dit_json_at(b, 2)) == DIT_JSON_NULL && dit_json_bool(dit_json_at(b, 2)) == -1, "b items");
    CHECK(dit_json_at(b, 3) == NULL, "dit_json_at past the end");
    const char *want = "x\xc3\xa9\xf0\x9f\x98\x80\n\"\\/\b\f\r\t";
    CHECK(dit_json_str(dit_json_get(r, "c")) && !strcmp(dit_json_str(dit_json_get(r, "c")), want) &&
              dit_json_len(dit_json_get(r, "c")) == strlen(want), "c = '%s'", dit_json_str(dit_json_get(r, "c")));
    CHECK(dit_json_type(dit_json_get(r, "d")) == DIT_JSON_OBJECT && dit_json_len(dit_json_get(r, "d")) == 0, "d");
    CHECK(dit_json_type(dit_json_get(r, "e")) == DIT_JSON_ARRAY && dit_json_len(dit_json_get(r, "e")) == 0, "e");
    CHECK(dit_json_num(dit_json_get(r, "f")) == -0.25 && !dit_json_int(dit_json_get(r, "f"), &v), "f");
    /* NULL-tolerant chaining and wrong types */
    CHECK(dit_json_get(r, "zz") == NULL && dit_json_get(NULL, "a") == NULL &&
              dit_json_get(b, "a") == NULL, "missing lookups");
    CHECK(dit_json_type(NULL) == DIT_JSON_NONE && dit_json_len(NULL) == 0 && dit_json_str(NULL) == NULL &&
              isnan(dit_json_num(NULL)) && dit_json_bool(NULL) == -1 && !dit_json_int(NULL, &v) &&
              dit_json_key(b, 0) == NULL && dit_json_at(NULL, 0) == NULL, "NULL accessors");
    CHECK(dit_json_str(dit_json_get(r, "a")) == NULL && isnan(dit_json_num(dit_json_get(r, "c"))), "types");
    CHECK(!strcmp(dit_json_type_name(DIT_JSON_OBJECT), "object") &&
              !strcmp(dit_json_type_name(99), "nothing"), "type names");
    dit_json_free(d);
}

static void test_numbers(void)
{
    static const struct {
        const char *text;
        int exact;
        int64_t ival;
        double num;
    } cases[] = {
        {"0", 1, 0, 0}, {"-0", 1, 0, -0.0}, {"1e3", 1, 1000, 1000},
        {"2.0", 1, 2, 2}, {"1500.0e-2", 1, 15, 15}, {"2.5", 0, 0, 2.5},
        {"1E-2", 0, 0, 0.01}, {"10.50", 0, 0, 10.5}, {"0.0e5", 1, 0, 0},
        {"9007199254740993", 1, 9007199254740993LL, 9007199254740992.0},
        {"9223372036854775807", 1, INT64_MAX, 9223372036854775807.0},
        {"-9223372036854775808", 1, INT64_MIN, -9223372036854775808.0},
        {"9223372036854775808", 0, 0, 9223372036854775808.0},
        {"1e19", 0, 0, 1e19}, {"-1e18", 1, -1000000000000000000LL, -1e18},
        {"1.5e300", 0, 0, 1.5e300}, {"1e-99999999999", 0, 0, 0},
        {"123456789012345678901234567890", 0, 0, 1.2345678901234568e29},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dit_json_doc *d = parse_ok(cases[i].text, strlen(cases[i].text), 0);
        if (!d)
            continue;
        int64_t v = 12345;
        int ex = dit_json_int(dit_json_root(d), &v);
        CHECK(ex == cases[i].exact && (!ex || v == cases[i].ival), "%s: exact %d "
              "value %lld", cases[i].text, ex, (long long)v);
        CHECK(!ex ? v == 12345 : 1, "%s: dit_json_int wrote a non-exact value", cases[i].text);
        CHECK(dit_json_num(dit_json_root(d)) == cases[i].num, "%s: num %.17g", cases[i].text,
              dit_json_num(dit_json_root(d)));
        dit_json_free(d);
    }
}

static void test_big_and_deep(void)
{
    /* 300 members: served by the hash index */
    static char t[300 * 32 + 16];
    size_t k = (size_t)snprintf(t, sizeof t, "{");
    for (int i = 0; i < 300; i++)
        k += (size_t)snprintf(t + k, sizeof t - k, "%s\"key%d\": %d", i ? "," : "",
                              i, i * 3);
    k += (size_t)snprintf(t + k, sizeof t - k, "}");
    dit_json_doc *d = parse_ok(t, k, 0);
    for (int i = 0; d && i < 300; i++) {
        char k[16];
        int64_t v = -1;
        snprintf(k, sizeof k, "key%d", i);
        CHECK(dit_json_int(dit_json_get(dit_json_root(d), k), &v) && v == i * 3, "%s = %lld", k,
              (long long)v);
        CHECK(!strcmp(dit_json_str(dit_json_key(dit_json_root(d), (size_t)i)), k), "order at %d", i);
    }
    CHECK(!d || dit_json_get(dit_json_root(d), "key300") == NULL, "absent key found");
    dit_json_free(d);
    /* duplicates in a large object are found too, and allowed by the flag */
    snprintf(t + k - 1, sizeof t - k + 1, ",\"key7\": 1}");
    parse_bad(t, strlen(t), "duplicate key \"key7\"");
    d = parse_ok(t, strlen(t), DIT_JSON_ALLOW_DUPLICATES);
    int64_t v = -1;
    CHECK(d && dit_json_int(dit_json_get(dit_json_root(d), "key7"), &v) && v == 21, "first key7 %lld",
          (long long)v);
    dit_json_free(d);

    char deep[2 * DIT_JSON_MAX_DEPTH + 8];
    memset(deep, '[', DIT_JSON_MAX_DEPTH);
    memset(deep + DIT_JSON_MAX_DEPTH, ']', DIT_JSON_MAX_DEPTH);
    dit_json_free(parse_ok(deep, 2 * DIT_JSON_MAX_DEPTH, 0));
    memset(deep, '[', DIT_JSON_MAX_DEPTH + 1);
    memset(deep + DIT_JSON_MAX_DEPTH + 1, ']', DIT_JSON_MAX_DEPTH + 1);
    parse_bad(deep, 2 * DIT_JSON_MAX_DEPTH + 2, "nesting deeper than");
}

static void test_strings(void)
{
    dit_json_doc *d = parse_ok("\"a\\u0000b\"", 10, 0);
    CHECK(d && dit_json_len(dit_json_root(d)) == 3 && !memcmp(dit_json_str(dit_json_root(d)), "a\0b", 4),
          "embedded NUL");
    dit_json_free(d);
    d = parse_ok("\"\xe2\x82\xac\xf4\x8f\xbf\xbf\"", 9, 0); /* U+20AC, U+10FFFF */
    CHECK(d && dit_json_len(dit_json_root(d)) == 7, "raw UTF-8");
    dit_json_free(d);
    /* not NUL-terminated: the parser must stop at len */
    d = parse_ok("[1, 2]xyz", 6, 0);
    CHECK(d && dit_json_len(dit_json_root(d)) == 2, "length-bounded parse");
    dit_json_free(d);
}

static void test_invalid(void)
{
    static const struct {
        const char *text;
        const char *want;
    } cases[] = {
        {"", "byte 0: expected a value, found end of input"},
        {"   ", "expected a value"},
        {"{", "expected a string key"},
        {"[1,]", "byte 3: expected a value"},
        {"{\"a\":1,}", "expected a string key"},
        {"{\"a\" 1}", "expected ':'"},
        {"{1:2}", "expected a string key"},
        {"[1 2]", "expected ',' or ']'"},
        {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"01", "byte 1: expected end of input"},
        {"1.", "expected a digit after '.'"},
        {"1e", "expected a digit in the exponent"},
        {"-", "expected a digit"},
        {"+1", "expected a value"},
        {".5", "expected a value"},
        {"NaN", "expected a value"},
        {"Infinity", "expected a value"},
        {"tru", "expected a value"},
        {"nul", "expected a value"},
        {"\"abc", "byte 0: unterminated string"},
        {"\"abc\\\"", "unterminated string"},
        {"\"a\tb\"", "control character 0x09"},
        {"\"a\nb\"", "control character 0x0a"},
        {"\"\\x\"", "expected one of"},
        {"\"\\u12\"", "4 hex digits"},
        {"\"\\ud800\"", "high surrogate"},
        {"\"\\ud800\\u0041\"", "high surrogate"},
        {"\"\\udc00\"", "lone low surrogate"},
        {"\"\xff\"", "invalid UTF-8"},
        {"\"\xc0\xaf\"", "invalid UTF-8"},          /* overlong '/' */
        {"\"\xed\xa0\x80\"", "invalid UTF-8"},      /* encoded surrogate */
        {"\"\xf4\x90\x80\x80\"", "invalid UTF-8"},  /* past U+10FFFF */
        {"\"\xe2\x82\"", "invalid UTF-8"},          /* truncated */
        {"{} x", "byte 3: expected end of input after the value, found 'x'"},
        {"{}{}", "expected end of input"},
        {"{\"a\":1,\"a\":2}", "duplicate key \"a\" in the object starting at byte 0"},
        {"[{\"k\":[],\"k\":{}}]", "duplicate key \"k\" in the object starting at byte 1"},
        {"/* c */ 1", "expected a value"},
        {"[1]\x01", "found byte 0x01"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        parse_bad(cases[i].text, strlen(cases[i].text), cases[i].want);
    parse_bad("[1]\0", 4, "expected end of input");
    parse_bad("\"a\0\"", 4, "control character 0x00");

    /* a tiny or missing error buffer is never overrun */
    char small[8];
    dit_json_doc *d;
    CHECK(dit_json_parse("[", 1, &d, small, sizeof small) == -1 && strlen(small) == 7,
          "small buffer '%s'", small);
    CHECK(dit_json_parse("[", 1, &d, NULL, 0) == -1 && d == NULL, "NULL err");
    CHECK(dit_json_parse(NULL, 0, &d, NULL, 0) == -1, "NULL buffer");
    dit_json_free(NULL);
}

int main(void)
{
    test_document();
    test_numbers();
    test_big_and_deep();
    test_strings();
    test_invalid();
    return check_exit();
}
