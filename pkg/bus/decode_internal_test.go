package bus

import "testing"

func TestClosestField(t *testing.T) {
	for _, c := range []struct {
		s     string
		names []string
		want  string
	}{
		{"ttl", []string{"key", "value", "ttl_ms"}, "ttl_ms"},
		{"TTL", []string{"key", "value", "ttl_ms"}, "ttl_ms"},
		{"kye", []string{"key", "value", "ttl_ms"}, "key"},
		{"vlaue", []string{"key", "value", "ttl_ms"}, "value"},
		{"delay", []string{"queue", "type", "delay_ms", "timeout_ms"}, "delay_ms"},
		{"unique_for", []string{"unique_key", "unique_for_ms"}, "unique_for_ms"},
		{"keys", []string{"key"}, "key"},
		{"qeueu", []string{"queue", "type"}, "queue"},
		{"zzz", []string{"key", "value", "ttl_ms"}, ""},
		{"x", nil, ""},
	} {
		if got := closest(c.s, c.names); got != c.want {
			t.Errorf("closest(%q, %v) = %q, want %q", c.s, c.names, got, c.want)
		}
	}
}

// A depth of MaxDepth passes the check, one more does not, wherever the
// levels are opened.
func TestMsgpackDepth(t *testing.T) {
	nest := func(levels int, open byte) []byte {
		b := make([]byte, 0, levels+1)
		for range levels - 1 {
			b = append(b, open)
			if open == 0x81 {
				b = append(b, 0xa1, 'k')
			}
		}
		return append(b, 0x90)
	}
	for _, open := range []byte{0x91, 0x81} {
		if err := checkMsgpack(nest(MaxDepth, open)); err != nil {
			t.Errorf("%#x: %d levels: %v", open, MaxDepth, err)
		}
		if err := checkMsgpack(nest(MaxDepth+1, open)); err == nil {
			t.Errorf("%#x: %d levels passed", open, MaxDepth+1)
		}
	}
	// Siblings do not add up: 1000 arrays side by side, each 50 deep.
	wide := []byte{0xdc, 0x03, 0xe8}
	for range 1000 {
		wide = append(wide, nest(50, 0x91)...)
	}
	if err := checkMsgpack(wide); err != nil {
		t.Errorf("wide body: %v", err)
	}
}
