package etcdtest

import "go.uber.org/goleak"

// IgnoreGoroutines returns the goleak options that a package whose tests use
// this harness should pass to goleak.VerifyTestMain or goleak.VerifyNone.
func IgnoreGoroutines() []goleak.Option {
	return nil
}
