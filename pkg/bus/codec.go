package bus

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"
)

// Codec is a wire encoding: msgpack (the default) or JSON.
type Codec uint8

const (
	// MsgPack is the default codec. Struct fields are named by their json tags.
	MsgPack Codec = iota
	// JSON is chosen by a Content-Type: application/json header, or by a body
	// that does not start with a msgpack map or nil.
	JSON
)

// Header names and values used on the wire.
const (
	HeaderContentType  = "Content-Type"
	ContentTypeJSON    = "application/json"
	ContentTypeMsgPack = "application/msgpack"
)

// String returns "msgpack" or "json".
func (c Codec) String() string {
	if c == JSON {
		return "json"
	}
	return "msgpack"
}

// ContentType returns the MIME type of the codec.
func (c Codec) ContentType() string {
	if c == JSON {
		return ContentTypeJSON
	}
	return ContentTypeMsgPack
}

// DetectCodec picks the codec of a request: the Content-Type header when it
// names one, else msgpack when the body starts with a msgpack map (0x80 to
// 0x8f, 0xde, 0xdf: every msgpack request is one) or is a msgpack nil
// (0xc0, an empty request), else JSON. So a body a person typed, even a
// malformed one (`nats req subject hello`), gets its error in JSON, which
// they can read.
func DetectCodec(h nats.Header, body []byte) Codec {
	if h != nil {
		switch ct := h.Get(HeaderContentType); {
		case strings.HasPrefix(ct, ContentTypeJSON):
			return JSON
		case strings.HasPrefix(ct, ContentTypeMsgPack):
			return MsgPack
		}
	}
	if len(body) > 0 && (body[0]&0xf0 == 0x80 || body[0] == 0xde || body[0] == 0xdf || body[0] == 0xc0) {
		return MsgPack
	}
	return JSON
}

// Marshal encodes v. Struct fields use their json tags in both codecs.
func (c Codec) Marshal(v any) ([]byte, error) {
	if c == JSON {
		return json.Marshal(v)
	}
	buf, err := c.encode(v)
	if err != nil {
		return nil, err
	}
	out := bytes.Clone(buf.Bytes())
	putBuffer(buf)
	return out, nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuffer(b *bytes.Buffer) {
	if b.Cap() <= 64<<10 {
		bufPool.Put(b)
	}
}

// encode encodes v into a pooled buffer, to be handed back with putBuffer
// once its bytes are no longer used (nats.go copies a message's data when it
// publishes it).
func (c Codec) encode(v any) (*bytes.Buffer, error) {
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	var err error
	if c == JSON {
		var b []byte
		b, err = json.Marshal(v)
		buf.Write(b)
	} else {
		enc := msgpack.GetEncoder()
		enc.Reset(buf)
		enc.SetCustomStructTag("json")
		err = enc.Encode(v)
		msgpack.PutEncoder(enc)
	}
	if err != nil {
		putBuffer(buf)
		return nil, err
	}
	return buf, nil
}

// decoder is a msgpack decoder with its reader, pooled together.
type decoder struct {
	r bytes.Reader
	d *msgpack.Decoder
}

var decPool = sync.Pool{New: func() any { return &decoder{d: msgpack.NewDecoder(nil)} }}

// Unmarshal decodes data into v leniently, as a client reads replies:
// unknown fields are ignored (a newer service may add some); a wrong type, a
// truncated body, trailing bytes or a msgpack body nested deeper than
// MaxDepth are errors. An empty body leaves v as is. Strings are taken as
// they come: msgpack's str type must hold UTF-8 but the decoder does not
// check it, and JSON replaces invalid sequences. Requests are decoded
// strictly instead, by Call.Decode (see decode.go).
func (c Codec) Unmarshal(data []byte, v any) error {
	if c == JSON {
		if len(bytes.TrimSpace(data)) == 0 {
			return nil
		}
		return json.Unmarshal(data, v)
	}
	if len(data) == 0 {
		return nil
	}
	if err := checkMsgpack(data); err != nil {
		return err
	}
	return c.unmarshalMsgpack(data, v, false)
}

// unmarshalMsgpack decodes a body that passed checkMsgpack; strict refuses
// fields v does not have.
func (c Codec) unmarshalMsgpack(data []byte, v any, strict bool) error {
	dec := decPool.Get().(*decoder)
	dec.r.Reset(data)
	dec.d.Reset(&dec.r)
	dec.d.SetCustomStructTag("json")
	dec.d.DisallowUnknownFields(strict)
	err := dec.d.Decode(v)
	if err == nil && dec.r.Len() > 0 {
		err = fmt.Errorf("msgpack: %d trailing bytes", dec.r.Len())
	}
	if err == nil {
		// A failed decode may have grown the decoder's buffer to the length a
		// malformed header claimed (msgpack grows it by up to 1 MB a call
		// and never shrinks it), so only a decoder that read a valid body,
		// whose buffer is bounded by the body, goes back to the pool.
		dec.r.Reset(nil)
		dec.d.Reset(nil)
		decPool.Put(dec)
	}
	return err
}

// Time is an instant that travels as an RFC 3339 string with milliseconds in
// UTC ("2026-11-25T20:35:01.123Z") in both codecs. The zero Time travels as
// an empty string.
type Time struct{ time.Time }

// TimeLayout is the wire layout of Time.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// String formats t in the wire layout.
func (t Time) String() string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(TimeLayout)
}

func (t *Time) parse(s string) error {
	if s == "" {
		t.Time = time.Time{}
		return nil
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("time %q is not RFC 3339", s)
	}
	t.Time = v
	return nil
}

// MarshalJSON implements json.Marshaler.
// The layout has no character that JSON escapes: the string is quoted as
// it is, without a second encoder.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte(`""`), nil
	}
	b := append(make([]byte, 0, len(TimeLayout)+8), '"')
	return append(t.UTC().AppendFormat(b, TimeLayout), '"'), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("time must be an RFC 3339 string")
	}
	return t.parse(s)
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (t Time) EncodeMsgpack(enc *msgpack.Encoder) error { return enc.EncodeString(t.String()) }

// DecodeMsgpack implements msgpack.CustomDecoder.
func (t *Time) DecodeMsgpack(dec *msgpack.Decoder) error {
	s, err := dec.DecodeString()
	if err != nil {
		return errors.New("time must be an RFC 3339 string")
	}
	return t.parse(s)
}
