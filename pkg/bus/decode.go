package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

// Requests are decoded strictly (Call.Decode, Typed); replies leniently
// (Codec.Unmarshal), so that a client keeps reading the replies of a newer
// service that added a field.
//
// A request is refused with a 400 that names the field, in both codecs:
//   - a field the request type does not have: ErrUnknownField, "ttl:
//     unknown field; did you mean ttl_ms?" (the closest field by edit
//     distance, or the list of fields when none is close);
//   - a value of the wrong type: ErrInvalid, "ttl_ms: expected an integer
//     (milliseconds), got a string", in JSON's terms, never Go's;
//   - a JSON body that is not UTF-8, or a JSON string holding a lone UTF-16
//     surrogate escape (\udc80): ErrInvalid naming the field, where
//     encoding/json would silently replace it with U+FFFD (msgpack strings
//     are checked by the services, which refuse keys and names that are not
//     UTF-8);
//   - a msgpack integer that does not fit its field (a negative one for an
//     unsigned field, one beyond 2^63 for a signed one), which the decoder
//     would wrap silently: JSON refuses those too;
//   - a msgpack body nested deeper than MaxDepth (see checkMsgpack), before
//     anything is allocated. JSON bodies are bounded by encoding/json's own
//     limit of 10,000 levels, which it checks before decoding.
//
// The decoders report where they failed only partly (encoding/json names the
// field of a type error but not the struct of an unknown field; msgpack names
// neither), so on failure the body is walked again against the request type
// to say which field is wrong: the cost is paid by bad requests only.

// decodeRequest decodes a request body into v strictly (see above).
func (c Codec) decodeRequest(data []byte, v any) error {
	if c == JSON {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil
		}
		if !utf8.Valid(data) || loneSurrogate(data) >= 0 {
			return explain(c, data, v, errors.New("the body is not UTF-8 text"))
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err := dec.Decode(v)
		if err == nil {
			if _, terr := dec.Token(); terr != io.EOF {
				return ErrInvalid.With("malformed json request: data after the request's object")
			}
			return nil
		}
		return explain(c, data, v, err)
	}
	if len(data) == 0 {
		return nil
	}
	signs, err := scanMsgpack(data)
	if err != nil {
		return ErrInvalid.With("malformed msgpack request: %s", clean(err))
	}
	if err := c.unmarshalMsgpack(data, v, true); err != nil {
		return explain(c, data, v, err)
	}
	if signs {
		// The decoder wraps a negative integer into an unsigned field and
		// a uint64 above 2^63 into a signed one; JSON refuses both.
		if e := (walker{c: c}).walk(reflect.TypeOf(v).Elem(), data, "", 0); e != nil {
			return e
		}
	}
	return nil
}

// explain turns a decoding error into a coded error naming the field at
// fault, found by walking data against v's type.
func explain(c Codec, data []byte, v any, err error) *Error {
	if c == JSON && !json.Valid(data) {
		var x any
		err = json.Unmarshal(data, &x) // a syntax error, with its offset
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return ErrInvalid.With("malformed json request: %s (at byte %d)", strings.TrimPrefix(se.Error(), "json: "), se.Offset)
	}
	w := walker{c: c}
	if e := w.walk(reflect.TypeOf(v).Elem(), data, "", 0); e != nil {
		return e
	}
	if c == JSON && strings.Contains(err.Error(), "exceeded max depth") {
		return ErrInvalid.With("malformed json request: nested deeper than 10000 levels")
	}
	// Not located; never show Go's types.
	msg := err.Error()
	if strings.Contains(msg, "Go ") || strings.Contains(msg, "reflect") {
		msg = "a value of the wrong type"
	}
	return ErrInvalid.With("malformed %s request: %s", c, strings.TrimPrefix(strings.TrimPrefix(msg, "json: "), "msgpack: "))
}

// walker finds the first field of a body that does not fit a type.
type walker struct{ c Codec }

var (
	timeType        = reflect.TypeFor[Time]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	msgpackDecoder  = reflect.TypeFor[msgpack.CustomDecoder]()
)

// walk checks raw, the value at path (empty for the body) depth levels
// down, against t and returns what is wrong with it, or nil.
func (w walker) walk(t reflect.Type, raw []byte, path string, depth int) *Error {
	switch {
	case depth > MaxDepth:
		return nil // left to the decoder's message; no request type nests so deep
	case w.isNull(raw) && !isCustom(t):
		return nil // absent: Validate decides whether it may be
	case isCustom(t):
		if e := w.text(raw, path); e != nil {
			return e
		}
		if err := w.decode(raw, reflect.New(t).Interface()); err != nil {
			return ErrInvalid.With("%s: %s", name(path), cleanCustom(err, t, w.describe(raw)))
		}
		return nil
	case t.Kind() == reflect.Pointer:
		return w.walk(t.Elem(), raw, path, depth)
	case t.Kind() == reflect.Interface:
		if err := w.decode(raw, reflect.New(t).Interface()); err != nil {
			return ErrInvalid.With("%s: %s", name(path), clean(err))
		}
		return nil
	case t.Kind() == reflect.Struct:
		fields := structFields(t)
		prefix := path
		if prefix != "" {
			prefix += "."
		}
		return w.object(raw, path, func(k string, v []byte) *Error {
			f := fields.find(k, w.c == JSON)
			if f == nil {
				if strings.ContainsRune(k, utf8.RuneError) && w.c == JSON && firstNotText(raw) >= 0 {
					return ErrInvalid.With("%s: a field name is not UTF-8 text", name(path))
				}
				return unknownField(prefix+k, fields.names)
			}
			return w.walk(f.typ, v, prefix+f.name, depth+1)
		})
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		return w.object(raw, path, func(k string, v []byte) *Error {
			return w.walk(t.Elem(), v, name(path)+"."+k, depth+1)
		})
	case t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		return w.array(raw, path, func(i int, v []byte) *Error {
			return w.walk(t.Elem(), v, path+"["+strconv.Itoa(i)+"]", depth+1)
		})
	}
	if e := w.text(raw, path); e != nil {
		return e
	}
	if err := w.decode(raw, reflect.New(t).Interface()); err != nil || !w.fits(raw, t) {
		return ErrInvalid.With("%s: expected %s, got %s", name(path), expected(t, path), w.describe(raw))
	}
	return nil
}

// fits reports whether a msgpack integer fits an integer type without
// wrapping: the decoder converts it without a check.
func (w walker) fits(raw []byte, t reflect.Type) bool {
	k := t.Kind()
	signed := k >= reflect.Int && k <= reflect.Int64
	unsigned := k >= reflect.Uint && k <= reflect.Uintptr
	if w.c != MsgPack || !signed && !unsigned {
		return true
	}
	var n any
	if msgpack.Unmarshal(raw, &n) != nil {
		return true // not an integer: the decoder said so
	}
	zero := reflect.Zero(t)
	switch x := n.(type) {
	case int8, int16, int32, int64:
		i := reflect.ValueOf(x).Int()
		if signed {
			return !zero.OverflowInt(i)
		}
		return i >= 0 && !zero.OverflowUint(uint64(i))
	case uint8, uint16, uint32, uint64:
		u := reflect.ValueOf(x).Uint()
		if unsigned {
			return !zero.OverflowUint(u)
		}
		return u <= math.MaxInt64 && !zero.OverflowInt(int64(u))
	}
	return true
}

// text refuses a JSON value that is not UTF-8 text.
func (w walker) text(raw []byte, path string) *Error {
	if w.c == JSON && firstNotText(raw) >= 0 {
		return ErrInvalid.With("%s: not UTF-8 text (a JSON text must be; send other bytes as base64 where the field allows it)", name(path))
	}
	return nil
}

// name is how a message names the field at path.
func name(path string) string {
	if path == "" {
		return "request"
	}
	return path
}

func isCustom(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return t == timeType || p.Implements(jsonUnmarshaler) || p.Implements(msgpackDecoder)
}

// expected names, in JSON's terms, what a field of type t holds.
func expected(t reflect.Type, path string) string {
	ms := ""
	if strings.HasSuffix(path, "_ms") {
		ms = " (milliseconds)"
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer" + ms
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer" + ms
	case reflect.Float32, reflect.Float64:
		return "a number" + ms
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return "bytes (a base64 string in JSON)"
		}
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a value of another type"
}

// cleanCustom is the message of a custom decoder's error (a cache value, an
// instant), worded for the wire.
func cleanCustom(err error, t reflect.Type, got string) string {
	if t == timeType {
		return "expected an RFC 3339 string (2026-01-02T15:04:05.000Z), got " + got
	}
	msg := clean(err)
	if strings.Contains(msg, "invalid code") || strings.Contains(msg, "Go ") {
		return "a value of the wrong type: " + got
	}
	return msg
}

func clean(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "json: "), "msgpack: ")
}

// unknownField is the error of a field named path that the request does
// not have, with the closest of names, the fields it has.
func unknownField(path string, names []string) *Error {
	field := path[strings.LastIndexAny(path, ".]")+1:]
	switch best := closest(field, names); {
	case len(names) == 0:
		return ErrUnknownField.With("%s: unknown field; this request takes no fields", path)
	case best != "":
		return ErrUnknownField.With("%s: unknown field; did you mean %s?", path, best)
	default:
		return ErrUnknownField.With("%s: unknown field; the fields are %s", path, strings.Join(names, ", "))
	}
}

// closest returns the name nearest to s, if it is near enough to be a
// likely slip: one a prefix of the other (ttl for ttl_ms; the nearest such
// first), else at most half the longer name's length apart by edit
// distance. Ties go to the first name.
func closest(s string, names []string) string {
	s = strings.ToLower(s)
	best, bestScore := "", 0
	for _, n := range names {
		d := editDistance(s, n)
		score := d
		if s != "" && (strings.HasPrefix(n, s) || strings.HasPrefix(s, n)) {
			score -= 1 << 20 // a prefix beats any edit
		} else if 2*d > max(len(s), len(n)) {
			continue
		}
		if best == "" || score < bestScore {
			best, bestScore = n, score
		}
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and swaps of neighbours
// ("kye" for "key") cost one each.
func editDistance(a, b string) int {
	if len(a) > 64 {
		a = a[:64] // a field name is short; a long one is far from all
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// fieldSet is the wire fields of a struct type.
type fieldSet struct {
	names []string // in declaration order
	list  []field
}

type field struct {
	name string
	typ  reflect.Type
}

// find returns the field named k; JSON, as encoding/json does, also
// matches a name that differs in case only.
func (s *fieldSet) find(k string, foldCase bool) *field {
	for i := range s.list {
		if s.list[i].name == k {
			return &s.list[i]
		}
	}
	if foldCase {
		for i := range s.list {
			if strings.EqualFold(s.list[i].name, k) {
				return &s.list[i]
			}
		}
	}
	return nil
}

var fieldSets sync.Map // reflect.Type -> *fieldSet

// structFields returns the wire fields of t, named by their json tags as
// both codecs name them; an embedded struct without a tag contributes its
// own fields.
func structFields(t reflect.Type) *fieldSet {
	if s, ok := fieldSets.Load(t); ok {
		return s.(*fieldSet)
	}
	s := &fieldSet{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		n, _, _ := strings.Cut(tag, ",")
		if n == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && n == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				inner := structFields(ft)
				s.list = append(s.list, inner.list...)
				continue
			}
		}
		if n == "" {
			n = f.Name
		}
		s.list = append(s.list, field{name: n, typ: f.Type})
	}
	for _, f := range s.list {
		s.names = append(s.names, f.name)
	}
	fieldSets.Store(t, s)
	return s
}

// FieldNames returns the wire names of the fields of a struct type (or a
// pointer to one), in declaration order: the names its requests may use.
func FieldNames(t reflect.Type) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return slices.Clone(structFields(t).names)
}

func (w walker) isNull(raw []byte) bool {
	if w.c == JSON {
		return string(bytes.TrimSpace(raw)) == "null"
	}
	return len(raw) == 1 && raw[0] == 0xc0
}

func (w walker) decode(raw []byte, v any) error {
	if w.c == JSON {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		return dec.Decode(v)
	}
	return w.c.unmarshalMsgpack(raw, v, true)
}

// object calls f with each field of the object at path (a map with string
// keys) and its value, in the body's order, until f returns an error. The
// values are read one at a time, so a bad body costs no more than the part
// read before its first fault.
func (w walker) object(raw []byte, path string, f func(k string, v []byte) *Error) *Error {
	if got := w.describe(raw); got != "an object" {
		return ErrInvalid.With("%s: expected an object, got %s", name(path), got)
	}
	malformed := ErrInvalid.With("%s: malformed object", name(path))
	if w.c == JSON {
		dec := json.NewDecoder(bytes.NewReader(raw))
		if _, err := dec.Token(); err != nil { // {
			return malformed
		}
		for dec.More() {
			tok, err := dec.Token()
			k, ok := tok.(string)
			var v json.RawMessage
			if err != nil || !ok || dec.Decode(&v) != nil {
				return malformed
			}
			if e := f(k, v); e != nil {
				return e
			}
		}
		return nil
	}
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return malformed
	}
	for range n {
		k, err := dec.DecodeString()
		if err != nil {
			return ErrInvalid.With("%s: an object whose keys are not all strings", name(path))
		}
		v, err := dec.DecodeRaw()
		if err != nil {
			return malformed
		}
		if e := f(k, v); e != nil {
			return e
		}
	}
	return nil
}

// array calls f with each element of the array at path, in turn, until f
// returns an error.
func (w walker) array(raw []byte, path string, f func(i int, v []byte) *Error) *Error {
	if got := w.describe(raw); got != "an array" {
		return ErrInvalid.With("%s: expected an array, got %s", name(path), got)
	}
	malformed := ErrInvalid.With("%s: malformed array", name(path))
	if w.c == JSON {
		dec := json.NewDecoder(bytes.NewReader(raw))
		if _, err := dec.Token(); err != nil { // [
			return malformed
		}
		for i := 0; dec.More(); i++ {
			var v json.RawMessage
			if dec.Decode(&v) != nil {
				return malformed
			}
			if e := f(i, v); e != nil {
				return e
			}
		}
		return nil
	}
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return malformed
	}
	for i := range n {
		v, err := dec.DecodeRaw()
		if err != nil {
			return malformed
		}
		if e := f(i, v); e != nil {
			return e
		}
	}
	return nil
}

// describe names what raw holds, in JSON's terms: "a string", "an object",
// a number as it was written.
func (w walker) describe(raw []byte) string {
	if w.c == JSON {
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			return "nothing"
		}
		switch raw[0] {
		case '"':
			return "a string"
		case '{':
			return "an object"
		case '[':
			return "an array"
		case 't', 'f':
			return "a boolean"
		case 'n':
			return "null"
		}
		if len(raw) > 32 {
			return "the number " + string(raw[:32]) + "..."
		}
		return string(raw)
	}
	if len(raw) == 0 {
		return "nothing"
	}
	switch c := raw[0]; {
	case c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3):
		var n any
		if msgpack.Unmarshal(raw, &n) == nil {
			return fmt.Sprint(n)
		}
		return "an integer"
	case c <= 0x8f || c == 0xde || c == 0xdf:
		return "an object"
	case c <= 0x9f || c == 0xdc || c == 0xdd:
		return "an array"
	case c <= 0xbf || (c >= 0xd9 && c <= 0xdb):
		return "a string"
	case c == 0xc0:
		return "null"
	case c == 0xc2 || c == 0xc3:
		return "a boolean"
	case c >= 0xc4 && c <= 0xc6:
		return "bytes (bin)"
	case c == 0xca || c == 0xcb:
		var f float64
		if msgpack.Unmarshal(raw, &f) == nil {
			return strconv.FormatFloat(f, 'g', -1, 64)
		}
		return "a number"
	}
	return "a msgpack extension"
}

// firstNotText returns the offset of the first byte of a JSON text that is
// not UTF-8, or of a string escape of a lone UTF-16 surrogate (which
// encoding/json turns into U+FFFD), or -1.
func firstNotText(b []byte) int {
	if !utf8.Valid(b) {
		for i := 0; i < len(b); {
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return i
			}
			i += n
		}
	}
	return loneSurrogate(b)
}

// loneSurrogate returns the offset of the first \uXXXX escape of a UTF-16
// surrogate that is not half of a pair, or -1. Backslashes only occur in a
// valid JSON text inside strings, so every one starts an escape.
func loneSurrogate(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\\')
		if j < 0 {
			return -1
		}
		i += j
		if i+1 >= len(b) {
			return -1
		}
		if b[i+1] != 'u' {
			i += 2
			continue
		}
		r, ok := hex4(b[i+2:])
		switch {
		case !ok:
			i += 2
		case r >= 0xd800 && r < 0xdc00: // high: a low must follow
			if len(b) < i+12 || b[i+6] != '\\' || b[i+7] != 'u' {
				return i
			}
			if lo, ok := hex4(b[i+8:]); !ok || lo < 0xdc00 || lo > 0xdfff {
				return i
			}
			i += 12
		case r >= 0xdc00 && r <= 0xdfff:
			return i
		default:
			i += 6
		}
	}
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(b[:4]), 16, 16)
	return rune(v), err == nil
}
