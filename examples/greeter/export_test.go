package greeter

// NewCACertPEM makes a throwaway CA as RunServer does and returns its
// certificate, for tests that need a CA file without a server.
func NewCACertPEM() ([]byte, error) {
	ca, err := newThrowawayCA()
	if err != nil {
		return nil, err
	}
	return ca.certPEM(), nil
}
