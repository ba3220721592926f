"""Wire contracts of mindstream: message bodies (pydantic), header conventions, the JSON codec."""
