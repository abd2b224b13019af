"""Widgets, one file per screen area. They only draw the values they are given."""
