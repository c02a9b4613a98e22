package sysinit

import (
	"fmt"
	"os"
	"strings"
)

// Cmdline is a parsed kernel command line.
// The zero value is an empty command line.
type Cmdline struct {
	params []param
}

type param struct {
	key, value string
	hasValue   bool
}

// ReadCmdline reads and parses /proc/cmdline (procfs must be mounted).
func ReadCmdline() (Cmdline, error) {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return Cmdline{}, fmt.Errorf("read kernel command line: %w", err)
	}
	return ParseCmdline(string(b)), nil
}

// ParseCmdline parses s the way the kernel's next_arg does: parameters are
// separated by whitespace, each is `key=value` or a bare `key`, and double
// quotes group whitespace (`key="a b"` or `"key=a b"`); the quotes enclosing a
// value are removed. Parsing stops at `--`: what follows belongs to init's
// argv, not to the kernel.
func ParseCmdline(s string) Cmdline {
	var c Cmdline
	for {
		s = strings.TrimLeft(s, " \t\n\v\f\r")
		if s == "" {
			return c
		}
		var p param
		p, s = nextArg(s)
		if p.key == "--" && !p.hasValue {
			return c
		}
		c.params = append(c.params, p)
	}
}

// nextArg is a port of the kernel's next_arg (lib/cmdline.c, kernel/params.c).
func nextArg(s string) (param, string) {
	quoted := false
	if s[0] == '"' {
		s = s[1:]
		quoted = true
	}
	inQuote := quoted
	equals := -1
	i := 0
	for ; i < len(s); i++ {
		if isSpace(s[i]) && !inQuote {
			break
		}
		// As in the kernel, a '=' in first place does not start a value.
		if equals < 0 && i > 0 && s[i] == '=' {
			equals = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	arg, rest := s[:i], s[i:]

	var p param
	if equals < 0 {
		p.key = arg
	} else {
		p.key, p.value, p.hasValue = arg[:equals], arg[equals+1:], true
		if strings.HasPrefix(p.value, `"`) {
			p.value = strings.TrimSuffix(p.value[1:], `"`)
			quoted = false // the closing quote is gone already
		}
	}
	if quoted {
		if p.hasValue {
			p.value = strings.TrimSuffix(p.value, `"`)
		} else {
			p.key = strings.TrimSuffix(p.key, `"`)
		}
	}
	return p, rest
}

func isSpace(b byte) bool {
	switch b {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

// Get returns the value of the last occurrence of key (later parameters
// override earlier ones, as in the kernel). A bare key yields "" and true.
// As in the kernel, '-' and '_' in keys are equivalent.
func (c Cmdline) Get(key string) (string, bool) {
	for i := len(c.params) - 1; i >= 0; i-- {
		if paramEqual(c.params[i].key, key) {
			return c.params[i].value, true
		}
	}
	return "", false
}

// ModuleParams returns the parameters given on the command line for module as
// `module.param=value`, in order, as "param=value" strings ready to be joined
// with spaces for finit_module. Module names match with '-' and '_' equivalent.
func (c Cmdline) ModuleParams(module string) []string {
	var out []string
	for _, p := range c.params {
		mod, name, ok := strings.Cut(p.key, ".")
		if !ok || name == "" || !paramEqual(mod, module) {
			continue
		}
		switch {
		case !p.hasValue:
			out = append(out, name)
		case strings.ContainsAny(p.value, " \t\n\v\f\r"):
			// The kernel splits module parameters with next_arg too.
			out = append(out, name+`="`+p.value+`"`)
		default:
			out = append(out, name+"="+p.value)
		}
	}
	return out
}

// paramEqual is the kernel's parameq: '-' and '_' compare equal.
func paramEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if dashToUnderscore(a[i]) != dashToUnderscore(b[i]) {
			return false
		}
	}
	return true
}

func dashToUnderscore(b byte) byte {
	if b == '-' {
		return '_'
	}
	return b
}
