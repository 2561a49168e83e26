package watchcache

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by calls on a closed Cache, and carried by the
	// final event each watcher receives when the cache closes.
	ErrClosed = errors.New("watchcache: cache closed")

	// ErrUnknownKind is returned when no kind is registered under a name.
	ErrUnknownKind = errors.New("watchcache: unknown kind")

	// ErrDuplicateKind is returned when a kind name is registered twice.
	ErrDuplicateKind = errors.New("watchcache: kind already registered")

	// ErrKindType is returned by KindOf when the kind's value type is not
	// the one asked for.
	ErrKindType = errors.New("watchcache: kind has a different value type")

	// ErrInvalid is wrapped by every error about bad arguments: negative
	// durations or rates, nil fetch functions, channels or callbacks, a
	// polling kind watched without MaxAge.
	ErrInvalid = errors.New("watchcache: invalid argument")

	// ErrTimeout is returned by a Get whose Timeout ended before the entry
	// had any value to return. With a value, a timed-out blocking Get
	// returns that value and no error, as Consul does.
	ErrTimeout = errors.New("watchcache: timed out waiting for the first value")

	// ErrFatal marks errors after which retrying cannot help, such as
	// permission denied or an unknown token. A fetch function returns it
	// wrapped (see Fatal). It stops the background refresh of the entry;
	// a later Get tries once more.
	ErrFatal = errors.New("watchcache: fatal fetch error")

	// ErrFetchPanic is wrapped by the error a fetch function's panic becomes.
	ErrFetchPanic = errors.New("watchcache: fetch function panicked")

	// ErrCallbackPanic is wrapped by the error logged when a NotifyCallback
	// callback panics.
	ErrCallbackPanic = errors.New("watchcache: callback panicked")
)

// invalidf returns an error wrapping ErrInvalid that names the problem.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Fatal marks err as fatal: the entry stops its background refresh instead
// of retrying. The result matches both ErrFatal and err with errors.Is, and
// its message is err's. Fatal(nil) is nil.
func Fatal(err error) error {
	if err == nil {
		return nil
	}
	return fatalError{err}
}

type fatalError struct{ err error }

func (f fatalError) Error() string        { return f.err.Error() }
func (f fatalError) Unwrap() error        { return f.err }
func (f fatalError) Is(target error) bool { return target == ErrFatal }

// isFatal reports whether err says the fetch will never succeed as is.
func isFatal(err error) bool { return errors.Is(err, ErrFatal) }
