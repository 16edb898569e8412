package printable

import "testing"

func TestString(t *testing.T) {
	for in, want := range map[string]string{
		"orders-east": "orders-east",
		"orders-east\n::error file=x.go::INJECTED": `orders-east\n::error file=x.go::INJECTED`,
		"4MB\narchive_command = 'touch /tmp/x'":    `4MB\narchive_command = 'touch /tmp/x'`,
		"a\rb\tc":                                  `a\rb\tc`,
		"0\ufeff":                                  `0\ufeff`,
		"east\u200b":                               `east\u200b`,
		"east\u00a0west":                           `east\u00a0west`,
		"\x1b[31mred":                              `\u001b[31mred`,
		"line\u2028sep":                            `line\u2028sep`,
		"rtl\u202eoverride":                        `rtl\u202eoverride`,
		"Grüße, 東京":                                "Grüße, 東京",
		"bad \xff byte":                            `bad \ufffd byte`,
	} {
		if got := String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
}
