package etcdkv

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// The access errors are kvstore's, so that an agent handles every store's
// alike.
var (
	// ErrPermissionDenied is wrapped by errors of requests that the
	// identity may not make: etcd answered "permission denied". Fetches
	// return it wrapped with watchcache.Fatal, so the entry stops
	// refreshing. An agent maps it to 403.
	ErrPermissionDenied = kvstore.ErrPermissionDenied

	// ErrAuthFailed is wrapped by errors about credentials: a wrong
	// password, an unknown user, an anonymous request to an etcd that
	// requires authentication, a password changed since the identity
	// logged in. Fetches return it wrapped with watchcache.Fatal.
	ErrAuthFailed = kvstore.ErrAuthFailed

	// ErrUnknownIdentity is returned (wrapped with watchcache.Fatal) for a
	// Partition that Login did not issue, or whose identity was dropped
	// (idle, or beyond MaxIdentities): the caller has to Login again.
	ErrUnknownIdentity = kvstore.ErrUnknownIdentity

	// ErrClosed is returned by calls on a closed Source.
	ErrClosed = kvstore.ErrClosed
)

// etcdError is an error from etcd (or from reaching it) for one operation.
// Its message names the operation; errors.Is matches both the cause and,
// for access errors, the package's sentinel.
type etcdError struct {
	op    string // "read \"/a/x\"", "put \"/a/x\"", ...
	class error  // ErrPermissionDenied, ErrAuthFailed or nil
	err   error
}

func (e *etcdError) Error() string { return "etcdkv: " + e.op + ": " + e.err.Error() }

func (e *etcdError) Unwrap() []error {
	if e.class == nil {
		return []error{e.err}
	}
	return []error{e.class, e.err}
}

// wrapErr describes err, returned by etcd for op, and classifies it.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return &etcdError{op: op, class: accessClass(err), err: err}
}

// accessClass returns ErrPermissionDenied or ErrAuthFailed for errors that
// say the identity may not do what it asked, and nil for the rest (an
// unreachable etcd, a timeout, a cancelled context), which may succeed
// later.
func accessClass(err error) error {
	switch {
	case errors.Is(err, ErrPermissionDenied), errors.Is(err, rpctypes.ErrPermissionDenied):
		return ErrPermissionDenied
	case errors.Is(err, ErrAuthFailed),
		errors.Is(err, rpctypes.ErrAuthFailed),
		errors.Is(err, rpctypes.ErrUserNotFound),
		errors.Is(err, rpctypes.ErrUserEmpty):
		return ErrAuthFailed
	}
	// A stale token (etcd invalidates them on every auth change, and
	// simple tokens expire) is not a verdict on the credentials: the
	// request renews it, and if that still fails the error is transient.
	return nil
}

// fetchErr is err as a fetch returns it: fatal when retrying cannot help
// (access errors, bad requests, a closed source), so the cache stops
// refreshing the entry instead of retrying in a loop.
func fetchErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case accessClass(err) != nil,
		errors.Is(err, ErrUnknownIdentity),
		errors.Is(err, ErrClosed),
		errors.Is(err, watchcache.ErrInvalid):
		return watchcache.Fatal(err)
	}
	return err
}

// invalidf returns an error wrapping watchcache.ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("etcdkv: %s: %w", fmt.Sprintf(format, args...), watchcache.ErrInvalid)
}
