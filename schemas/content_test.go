package schemas_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// packed is a msgpack value decoded with its wire type kept: "bin", "str",
// "int", "float", "bool", "nil", "map" or "array".
type packed struct {
	kind string
	str  string // bin and str
	num  string // int and float, as decimal text
	b    bool
	m    map[string]packed
	keys []string // m's keys, in wire order
	a    []packed
}

// unpack decodes a msgpack value keeping its wire type.
func unpack(dec *msgpack.Decoder) (packed, error) {
	c, err := dec.PeekCode()
	if err != nil {
		return packed{}, err
	}
	switch {
	case c == msgpcode.Nil:
		return packed{kind: "nil"}, dec.DecodeNil()
	case c == msgpcode.True || c == msgpcode.False:
		b, err := dec.DecodeBool()
		return packed{kind: "bool", b: b}, err
	case c == msgpcode.Float || c == msgpcode.Double:
		f, err := dec.DecodeFloat64()
		return packed{kind: "float", num: fmt.Sprint(f)}, err
	case msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Int64):
		if c == msgpcode.Uint64 {
			u, err := dec.DecodeUint64()
			return packed{kind: "int", num: fmt.Sprint(u)}, err
		}
		i, err := dec.DecodeInt64()
		return packed{kind: "int", num: fmt.Sprint(i)}, err
	case msgpcode.IsBin(c):
		b, err := dec.DecodeBytes()
		return packed{kind: "bin", str: string(b)}, err
	case msgpcode.IsString(c):
		s, err := dec.DecodeString()
		return packed{kind: "str", str: s}, err
	case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
		n, err := dec.DecodeMapLen()
		if err != nil {
			return packed{}, err
		}
		p := packed{kind: "map", m: map[string]packed{}}
		for range n {
			k, err := dec.DecodeString()
			if err != nil {
				return packed{}, fmt.Errorf("a map key that is not a str: %w", err)
			}
			v, err := unpack(dec)
			if err != nil {
				return packed{}, err
			}
			p.m[k], p.keys = v, append(p.keys, k)
		}
		return p, nil
	case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
		n, err := dec.DecodeArrayLen()
		if err != nil {
			return packed{}, err
		}
		p := packed{kind: "array", a: []packed{}}
		for range n {
			v, err := unpack(dec)
			if err != nil {
				return packed{}, err
			}
			p.a = append(p.a, v)
		}
		return p, nil
	}
	return packed{}, fmt.Errorf("msgpack code %#x is not used on the mesh's wire", c)
}

// json is the value as the service writes it in JSON: bytes that are
// UTF-8 text as a string, other bytes as {"base64": ...}.
func (p packed) json() any {
	switch p.kind {
	case "bin":
		if utf8.ValidString(p.str) {
			return p.str
		}
		return map[string]any{"base64": base64.StdEncoding.EncodeToString([]byte(p.str))}
	case "str":
		return p.str
	case "int", "float":
		return json.Number(p.num)
	case "bool":
		return p.b
	case "nil":
		return nil
	case "map":
		m := map[string]any{}
		for k, v := range p.m {
			m[k] = v.json()
		}
		return m
	}
	a := []any{}
	for _, v := range p.a {
		a = append(a, v.json())
	}
	return a
}

// fromMsgpack returns a msgpack reply in JSON, for the schema, with its
// wire types.
func fromMsgpack(b []byte) ([]byte, packed, error) {
	dec := msgpack.NewDecoder(bytes.NewReader(b))
	p, err := unpack(dec)
	if err != nil {
		return nil, p, err
	}
	if _, err := dec.PeekCode(); err == nil {
		return nil, p, fmt.Errorf("bytes after the reply's value")
	}
	out, err := json.Marshal(p.json())
	return out, p, err
}

// bytesDefs are the definitions of byte values: in msgpack replies, bin.
var bytesDefs = []string{"cache_value"}

// checkTypes checks the wire types of a msgpack reply against its schema
// s (in file) and returns what is wrong: a byte value (bytesDefs) must be
// bin, any other string str, and a number an integer wherever the schema
// does not allow a fraction (the mesh's replies carry none: durations in
// ms, counts, tokens).
func (d docs) checkTypes(t *testing.T, file string, s map[string]any, p packed, path string) []string {
	t.Helper()
	if s != nil {
		file, s = d.resolve(t, file, s)
	}
	isBytes := false
	for _, name := range bytesDefs {
		def := d["defs.json"]["$defs"].(map[string]any)[name]
		if s != nil && reflect.ValueOf(s).Pointer() == reflect.ValueOf(def).Pointer() {
			isBytes = true
		}
	}
	var bad []string
	switch p.kind {
	case "bin":
		if !isBytes {
			bad = append(bad, path+" is msgpack bin where the schema has text: want str")
		}
	case "str":
		if isBytes {
			bad = append(bad, path+" is msgpack str, a byte value: want bin")
		}
	case "float":
		if s == nil || s["type"] != "number" {
			bad = append(bad, fmt.Sprintf("%s is a msgpack float (%s) where the schema has an integer", path, p.num))
		}
	case "map":
		for _, k := range p.keys {
			bad = append(bad, d.checkTypes(t, file, d.property(t, file, s, k), p.m[k], path+"."+k)...)
		}
	case "array":
		var items map[string]any
		if s != nil {
			items, _ = d.alternatives(t, file, s, "items")
		}
		for i, v := range p.a {
			bad = append(bad, d.checkTypes(t, file, items, v, fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return bad
}

// property returns the schema of property k of object schema s, looking
// into its oneOf, anyOf and allOf alternatives; nil when none says.
func (d docs) property(t *testing.T, file string, s map[string]any, k string) map[string]any {
	if s == nil {
		return nil
	}
	if props, ok := s["properties"].(map[string]any); ok {
		if ps, ok := props[k].(map[string]any); ok {
			return ps
		}
	}
	for _, alt := range []string{"oneOf", "anyOf", "allOf"} {
		list, _ := s[alt].([]any)
		for _, a := range list {
			am, _ := a.(map[string]any)
			_, am = d.resolve(t, file, am)
			if ps := d.property(t, file, am, k); ps != nil {
				return ps
			}
		}
	}
	if ap, ok := s["additionalProperties"].(map[string]any); ok {
		return ap
	}
	return nil
}

// alternatives returns s[key], or the first one found among s's oneOf,
// anyOf and allOf alternatives.
func (d docs) alternatives(t *testing.T, file string, s map[string]any, key string) (map[string]any, bool) {
	if v, ok := s[key].(map[string]any); ok {
		return v, true
	}
	for _, alt := range []string{"oneOf", "anyOf", "allOf"} {
		list, _ := s[alt].([]any)
		for _, a := range list {
			am, _ := a.(map[string]any)
			_, am = d.resolve(t, file, am)
			if v, ok := d.alternatives(t, file, am, key); ok {
				return v, true
			}
		}
	}
	return nil, false
}

// subset reports where got differs from want, a subset of it: every field
// of a wanted object is in got with a matching value, a wanted array has
// got's length and matching elements, {"$contains": [...]} is an array
// holding elements that match these, in this order, among others (a list
// that other examples add to), and a scalar is equal ("" when got
// matches).
func subset(want, got any, path string) string {
	switch w := want.(type) {
	case map[string]any:
		if c, ok := w["$contains"].([]any); ok && len(w) == 1 {
			return contains(c, got, path)
		}
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: want an object, got %v", path, got)
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			gv, ok := g[k]
			if !ok {
				return fmt.Sprintf("%s.%s: missing", path, k)
			}
			if diff := subset(w[k], gv, path+"."+k); diff != "" {
				return diff
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("%s: want %d elements, got %v", path, len(w), got)
		}
		for i := range w {
			if diff := subset(w[i], g[i], fmt.Sprintf("%s[%d]", path, i)); diff != "" {
				return diff
			}
		}
		return ""
	case json.Number:
		if g, ok := got.(json.Number); !ok || g.String() != w.String() {
			return fmt.Sprintf("%s: want %s, got %v", path, w, got)
		}
		return ""
	}
	if !reflect.DeepEqual(want, got) {
		return fmt.Sprintf("%s: want %#v, got %#v", path, want, got)
	}
	return ""
}

// contains reports where got, an array, does not hold elements matching
// want's, in order.
func contains(want []any, got any, path string) string {
	g, ok := got.([]any)
	if !ok {
		return fmt.Sprintf("%s: want an array, got %v", path, got)
	}
	i := 0
	for _, w := range want {
		for i < len(g) && subset(w, g[i], path) != "" {
			i++
		}
		if i == len(g) {
			b, _ := json.Marshal(w)
			return fmt.Sprintf("%s: no element matching %s (in order)", path, b)
		}
		i++
	}
	return ""
}

// decodeJSON decodes JSON keeping numbers as written.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// checkExpect checks a reply (in JSON) against the example's expect.
func checkExpect(t *testing.T, what string, expect json.RawMessage, data []byte) {
	t.Helper()
	want, err := decodeJSON(expect)
	if err != nil {
		t.Errorf("%s: expect: %v", what, err)
		return
	}
	got, err := decodeJSON(data)
	if err != nil {
		t.Errorf("%s: reply: %v", what, err)
		return
	}
	if diff := subset(want, got, "reply"); diff != "" {
		t.Errorf("%s: %s\n%s", what, diff, strings.TrimSpace(string(data)))
	}
}

// Every check above can fail.
func TestContentChecksCatch(t *testing.T) {
	for _, c := range []struct{ want, got string }{
		{`{"found":true,"value":"hello"}`, `{"found":false}`},
		{`{"found":true,"value":"hello"}`, `{"found":true,"value":"aGVsbG8="}`},
		{`{"n":3}`, `{"n":3.5}`},
		{`{"ids":["a"]}`, `{"ids":["a","b"]}`},
		{`{"a":{"b":1}}`, `{"a":{"b":2,"c":3}}`},
		{`{"l":{"$contains":[{"n":1},{"n":2}]}}`, `{"l":[{"n":2},{"n":1}]}`},
		{`{"l":{"$contains":[{"n":1}]}}`, `{"l":[]}`},
	} {
		want, _ := decodeJSON([]byte(c.want))
		got, _ := decodeJSON([]byte(c.got))
		if subset(want, got, "reply") == "" {
			t.Errorf("%s matched %s", c.got, c.want)
		}
	}
	want, _ := decodeJSON([]byte(`{"found":true,"value":"hello","extra":[1],"l":{"$contains":[{"n":1},{"n":3}]}}`))
	got, _ := decodeJSON([]byte(`{"found":true,"value":"hello","extra":[1],"ttl_ms":5,"l":[{"n":1,"m":0},{"n":2},{"n":3}]}`))
	if diff := subset(want, got, "reply"); diff != "" {
		t.Errorf("a superset did not match: %s", diff)
	}

	d := loadDocs(t)
	reply := func(v map[string]any) packed {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		_, p, err := fromMsgpack(b)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		file string
		v    map[string]any
		bad  bool
	}{
		{"cache.get.reply.json", map[string]any{"found": true, "value": []byte("hello"), "ttl_ms": 1000}, false},
		{"cache.get.reply.json", map[string]any{"found": true, "value": "hello"}, true},                           // a byte value as str
		{"cache.get.reply.json", map[string]any{"found": true, "value": []byte("hello"), "ttl_ms": 1000.0}, true}, // an integer as float
		{"cache.mget.reply.json", map[string]any{"values": []any{map[string]any{"found": true, "value": "v"}}}, true},
		{"lock.inspect.reply.json", map[string]any{"name": []byte("a")}, true}, // text as bin
	} {
		bad := d.checkTypes(t, c.file, d[c.file], reply(c.v), "reply")
		if (len(bad) > 0) != c.bad {
			t.Errorf("%s %v: %q, want bad %v", c.file, c.v, bad, c.bad)
		}
	}
}
